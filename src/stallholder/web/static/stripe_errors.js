// Stripe's errors in the buyer's words, for the checkout and portal pages (loaded before
// checkout.js and portal_card.js, only with the Stripe gateway). Stripe's own messages
// often speak to a developer ("We are unable to authenticate your payment method. Please
// choose a different payment method and try again."); the buyer reads a short sentence
// that says what happened and what to do. The server's pages use the same sentences for
// the same codes (web/checkout_pages.py BUYER_DECLINES).
(function () {
  "use strict";
  var BY_CODE = {
    payment_intent_authentication_failure: "Your bank did not confirm this payment. Try again, or use another card.",
    setup_intent_authentication_failure: "Your bank did not confirm this card. Try again, or use another card.",
    authentication_required: "Your bank wants to confirm this card. Try again, or use another card.",
    card_declined: "Your card was declined. Try another card.",
    expired_card: "Your card has expired. Try another card.",
    incorrect_cvc: "The security code does not match the card. Check it and try again.",
    processing_error: "Your card could not be checked just now. Try again in a moment."
  };
  var BY_DECLINE_CODE = {
    insufficient_funds: "Your card has insufficient funds. Try another card.",
    expired_card: "Your card has expired. Try another card.",
    test_mode_live_card: "This shop takes test cards only: a real card was not charged."
  };
  var OTHERWISE = "Your card could not be used. Try again, or use another card.";

  function buyerMessage(error) {
    if (!error) return OTHERWISE;
    if (error.decline_code && BY_DECLINE_CODE[error.decline_code]) return BY_DECLINE_CODE[error.decline_code];
    if (error.code && BY_CODE[error.code]) return BY_CODE[error.code];
    // Stripe writes its validation errors (a mistyped card number) for the buyer already.
    if (error.type === "validation_error" && error.message) return error.message;
    return OTHERWISE;
  }

  window.StallholderStripeErrors = { buyerMessage: buyerMessage };
})();
