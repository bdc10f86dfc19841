// The portal's "Add a new card" with the Stripe gateway: the Payment Element in deferred
// setup mode makes the PaymentMethod in the buyer's browser (the card never reaches us);
// the form then posts its pm_ id as the token, which the portal saves to the buyer.
(function () {
  "use strict";
  var form = document.getElementById("new-card-form");
  if (!form || !form.getAttribute("data-stripe-key") || typeof window.Stripe !== "function") return;
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  var token = form.querySelector("input[name=token]");
  var button = document.getElementById("save-card");
  var errorBox = document.getElementById("card-error");
  var elements = stripe.elements({
    mode: "setup",
    currency: form.getAttribute("data-currency"),
    paymentMethodCreation: "manual"
  });
  elements.create("payment").mount("#payment-element");
  var isBusy = false;
  function done(message) {
    errorBox.textContent = message;
    isBusy = false;
    button.disabled = false;
  }
  form.addEventListener("submit", function (event) {
    if (token.value) return;
    event.preventDefault();
    // One payment method per press: a second press while Stripe works is ignored.
    if (isBusy) return;
    isBusy = true;
    button.disabled = true;
    errorBox.textContent = "";
    elements.submit().then(function (submitted) {
      if (submitted.error) return done(submitted.error.message);
      return stripe.createPaymentMethod({ elements: elements }).then(function (created) {
        if (created.error) return done(created.error.message);
        token.value = created.paymentMethod.id;
        form.submit();
      });
    }).catch(function (error) { done(error.message); });
  });
})();
