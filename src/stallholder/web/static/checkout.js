// The hosted checkout page's enhancements. The page works without them in the sandbox.
// 1. Embedded (?embed=1): tell the embedding page (and only its origin) that the buyer
//    paid or closed the overlay.
// 2. Stripe: mount the Payment Element, create the payment method, and run next_action.
(function () {
  "use strict";
  var body = document.body;
  var parentOrigin = body.getAttribute("data-embed-origin");

  function tell(type) {
    if (!parentOrigin || window.parent === window) return;
    var message = { type: type, session: body.getAttribute("data-session") };
    if (body.getAttribute("data-order")) message.order = body.getAttribute("data-order");
    if (body.getAttribute("data-subscription")) message.subscription = body.getAttribute("data-subscription");
    // The exact origin: the browser drops the message if the parent is anything else.
    window.parent.postMessage(message, parentOrigin);
  }

  if (parentOrigin) {
    if (body.getAttribute("data-status") === "complete") tell("stallholder:complete");
    Array.prototype.forEach.call(document.querySelectorAll("[data-close]"), function (button) {
      button.addEventListener("click", function (event) {
        event.preventDefault();
        tell("stallholder:close");
      });
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") tell("stallholder:close");
    });
  }

  var form = document.getElementById("pay-form");
  if (!form || !form.getAttribute("data-stripe-key") || typeof window.Stripe !== "function") return;
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  // Stripe's errors in the buyer's words (stripe_errors.js, loaded before this script).
  var words = window.StallholderStripeErrors;
  var errorBox = document.getElementById("payment_method-error");
  var method = form.querySelector("input[name=payment_method]");
  function fail(message) { errorBox.textContent = message; }

  var actionSecret = form.getAttribute("data-action-secret");
  if (actionSecret) {
    // 3-D Secure: Stripe.js shows the bank's challenge; then the same form confirms
    // again and the server reads the PaymentIntent's outcome.
    // If Stripe.js itself fails (no network), the buyer is told and Pay sends the form
    // again with the same payment method: the server re-reads the PaymentIntent.
    new Promise(function (resolve) {
      resolve(stripe.handleNextAction({ clientSecret: actionSecret }));
    }).then(function (result) {
      // The server reads the PaymentIntent again and says the same in the page it sends.
      if (result.error) fail(words.buyerMessage(result.error));
      form.submit();
    }).catch(function (error) {
      fail("Your bank's check could not be opened (" + error.message + "). Press Pay to try again.");
    });
    return;
  }
  var options = {
    mode: "payment",
    amount: parseInt(form.getAttribute("data-amount"), 10),
    currency: form.getAttribute("data-currency"),
    paymentMethodCreation: "manual"
  };
  if (form.getAttribute("data-mode") === "subscription") options.setupFutureUsage = "off_session";
  var elements = stripe.elements(options);
  elements.create("payment").mount("#payment-element");

  // Pay what you want: the Payment Element shows (and wallets charge) the amount typed.
  var exponent = parseInt(form.getAttribute("data-exponent") || "2", 10);
  function minorUnits(text) {
    // "12.5" is 1250 with two digits after the point; anything else is left to the server.
    var match = /^\s*(\d{1,12})(?:[.,](\d*))?\s*$/.exec(text);
    if (!match) return null;
    var fraction = match[2] || "";
    if (fraction.length > exponent) return null;
    while (fraction.length < exponent) fraction += "0";
    return parseInt(match[1] + fraction, 10);
  }
  var amountInput = form.querySelector("input[name=amount]");
  if (amountInput) {
    amountInput.addEventListener("input", function () {
      var amount = minorUnits(amountInput.value);
      if (amount !== null && amount > 0) elements.update({ amount: amount });
    });
  }
  var button = document.getElementById("pay-button");
  var isBusy = false;
  function done(message) {
    fail(message);
    isBusy = false;
    button.disabled = false;
  }
  form.addEventListener("submit", function (event) {
    if (method.value) return;
    event.preventDefault();
    // One payment method per press: a second press while Stripe works is ignored.
    if (isBusy) return;
    isBusy = true;
    button.disabled = true;
    fail("");
    elements.submit().then(function (submitted) {
      if (submitted.error) return done(words.buyerMessage(submitted.error));
      return stripe.createPaymentMethod({ elements: elements }).then(function (created) {
        if (created.error) return done(words.buyerMessage(created.error));
        method.value = created.paymentMethod.id;
        form.submit();
      });
    }).catch(function (error) { done(error.message); });
  });
})();
