// The portal's "Add a new card" with the Stripe gateway.
// 1. The Payment Element in deferred setup mode makes the PaymentMethod in the buyer's
//    browser (the card never reaches us); the form posts its pm_ id as the token.
// 2. The server answers with a SetupIntent for it (data-setup-secret): Stripe.js
//    confirmCardSetup confirms it here, running the bank's check (3-D Secure) when the
//    bank asks; the form then posts the SetupIntent's id, which the server reads from
//    Stripe and saves only if it succeeded. A failed or abandoned check saves nothing:
//    the page says so in plain words and offers the Payment Element again.
(function () {
  "use strict";
  var form = document.getElementById("new-card-form");
  if (!form || !form.getAttribute("data-stripe-key") || typeof window.Stripe !== "function") return;
  var words = window.StallholderStripeErrors;
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  var token = form.querySelector("input[name=token]");
  var setupIntent = form.querySelector("input[name=setup_intent]");
  var button = document.getElementById("save-card");
  var errorBox = document.getElementById("card-error");
  var elements = null;
  var isBusy = false;

  function mount() {
    elements = stripe.elements({
      mode: "setup",
      currency: form.getAttribute("data-currency"),
      paymentMethodCreation: "manual"
    });
    elements.create("payment").mount("#payment-element");
  }
  function done(message) {
    errorBox.textContent = message;
    isBusy = false;
    button.disabled = false;
  }

  var secret = form.getAttribute("data-setup-secret");
  if (secret) {
    isBusy = true;
    button.disabled = true;
    var forget = function (message) {
      var notice = document.getElementById("needs-action");
      if (notice) notice.remove();
      form.removeAttribute("data-setup-secret");
      mount();
      done(message);
    };
    new Promise(function (resolve) {
      resolve(stripe.confirmCardSetup(secret, { payment_method: form.getAttribute("data-payment-method") }));
    }).then(function (result) {
      if (result.error) return forget(words.buyerMessage(result.error));
      setupIntent.value = result.setupIntent.id;
      form.submit();
    }).catch(function () {
      forget("Your bank's check could not be opened, so the card was not saved. Add it again.");
    });
  } else {
    mount();
  }

  form.addEventListener("submit", function (event) {
    if (token.value || setupIntent.value) return;
    event.preventDefault();
    // One payment method per press: a second press while Stripe works is ignored.
    if (isBusy || !elements) return;
    isBusy = true;
    button.disabled = true;
    errorBox.textContent = "";
    elements.submit().then(function (submitted) {
      if (submitted.error) return done(words.buyerMessage(submitted.error));
      return stripe.createPaymentMethod({ elements: elements }).then(function (created) {
        if (created.error) return done(words.buyerMessage(created.error));
        token.value = created.paymentMethod.id;
        form.submit();
      });
    }).catch(function (error) { done(error.message); });
  });
})();
