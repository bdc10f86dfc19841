// A test double of Stripe.js (https://js.stripe.com/v3/), for exactly what Stallholder's
// pages call. It follows Stripe.js's published API reference for those calls; it is not
// Stripe.js. Browser tests serve it in place of the real script (tests/doubles/stripe_js.py),
// so the page loads the same URL as in production.
//
//   Stripe(publishableKey)
//   stripe.elements({mode, amount, currency, paymentMethodCreation, setupFutureUsage})
//       deferred mode only (no clientSecret), as our pages use it
//   elements.create("payment").mount(selectorOrElement)
//       a labelled card-number input in the mount point (Stripe's is an iframe)
//   elements.submit()                       -> {} or {error: {type, code, message}}
//   stripe.createPaymentMethod({elements})  -> {paymentMethod} or {error}
//       POST https://api.stripe.com/v1/payment_methods with key=<publishable key>, as
//       Stripe.js sends it; the test routes that host to the Stripe API double
//   stripe.handleNextAction({clientSecret}) -> {paymentIntent} or {error}
//       shows a 3-D Secure dialog like Stripe's test page (Complete / Fail; Escape fails),
//       then asks the API double's test control to authenticate the PaymentIntent
//   stripe.confirmCardSetup(clientSecret, {payment_method}?) -> {setupIntent} or {error}
//       POST https://api.stripe.com/v1/setup_intents/{id}/confirm with the publishable key
//       and the client secret; a card that needs 3-D Secure gets the same dialog, then
//       the API double's test control (on the API host) authenticates the SetupIntent
//
// What Stripe.js would throw (an IntegrationError) for a wrong call, this throws too, so
// a page that calls it wrongly fails its browser test. ``window.StripeDouble.calls`` keeps
// the calls, for assertions.
(function () {
  "use strict";
  var API = "https://api.stripe.com";
  var CONTROLS = API;
  var calls = [];
  window.StripeDouble = { calls: calls };

  function IntegrationError(message) {
    var error = new Error(message);
    error.name = "IntegrationError";
    return error;
  }

  function post(url, fields) {
    var body = new URLSearchParams();
    Object.keys(fields).forEach(function (name) { body.append(name, fields[name]); });
    // A form post and no custom header: a simple request, as Stripe.js makes.
    return fetch(url, { method: "POST", body: body }).then(function (response) {
      return response.json().then(function (json) {
        return { ok: response.ok, json: json };
      });
    });
  }

  function luhn(number) {
    var sum = 0;
    for (var i = 0; i < number.length; i++) {
      var digit = parseInt(number.charAt(number.length - 1 - i), 10);
      if (i % 2 === 1) { digit *= 2; if (digit > 9) digit -= 9; }
      sum += digit;
    }
    return sum % 10 === 0;
  }

  function validationError(code, message) {
    return { error: { type: "validation_error", code: code, message: message } };
  }

  function PaymentElement(elements) {
    this._elements = elements;
    this._input = null;
  }
  PaymentElement.prototype.mount = function (target) {
    var node = typeof target === "string" ? document.querySelector(target) : target;
    if (!node) throw IntegrationError("The selector you specified (" + target + ") applies to no DOM elements that are currently on the page.");
    if (this._input) throw IntegrationError("This Element is already mounted.");
    var label = document.createElement("label");
    label.setAttribute("for", "stripe-double-card-number");
    label.textContent = "Card number";
    var input = document.createElement("input");
    input.id = "stripe-double-card-number";
    input.setAttribute("inputmode", "numeric");
    input.setAttribute("autocomplete", "cc-number");
    input.setAttribute("placeholder", "1234 1234 1234 1234");
    node.appendChild(label);
    node.appendChild(input);
    node.setAttribute("data-stripe-double", "mounted");
    this._input = input;
    calls.push({ call: "mount", target: String(target) });
  };
  PaymentElement.prototype.number = function () {
    return this._input ? this._input.value.replace(/\s+/g, "") : "";
  };

  function Elements(stripe, options) {
    this._stripe = stripe;
    this._options = options;
    this._element = null;
    this._submitted = false;
  }
  Elements.prototype.create = function (type) {
    if (type !== "payment") throw IntegrationError("The double only has the Payment Element, not " + type + ".");
    if (this._element) throw IntegrationError("Can only create one Element of type payment.");
    this._element = new PaymentElement(this);
    calls.push({ call: "elements.create", type: type });
    return this._element;
  };
  Elements.prototype.update = function (options) {
    Object.keys(options).forEach(function (name) { this._options[name] = options[name]; }, this);
    calls.push({ call: "elements.update", options: options });
  };
  Elements.prototype.submit = function () {
    calls.push({ call: "elements.submit" });
    var element = this._element;
    if (!element || !element._input) {
      return Promise.resolve({ error: { type: "invalid_request_error", message: "elements.submit() needs a mounted Payment Element." } });
    }
    var number = element.number();
    if (!number) return Promise.resolve(validationError("incomplete_number", "Your card number is incomplete."));
    if (!/^\d{13,19}$/.test(number) || !luhn(number)) {
      return Promise.resolve(validationError("invalid_number", "Your card number is invalid."));
    }
    this._submitted = true;
    return Promise.resolve({});
  };

  function Client(key) {
    this._key = key;
  }
  Client.prototype.elements = function (options) {
    options = options || {};
    calls.push({ call: "elements", options: JSON.parse(JSON.stringify(options)) });
    if (options.clientSecret) throw IntegrationError("The double follows the deferred flow only (no clientSecret).");
    var modes = ["payment", "setup", "subscription"];
    if (modes.indexOf(options.mode) < 0) throw IntegrationError("Invalid value for elements(): mode should be one of payment, setup, subscription.");
    if (options.mode !== "setup") {
      if (!(Number.isInteger(options.amount) && options.amount >= 0)) throw IntegrationError("Invalid value for elements(): amount should be a non-negative integer in the smallest currency unit.");
      if (!options.currency) throw IntegrationError("Missing value for elements(): currency should be a string.");
    }
    if (options.currency && options.currency !== options.currency.toLowerCase()) throw IntegrationError("Invalid value for elements(): currency should be a lowercase ISO code.");
    if (options.setupFutureUsage && ["off_session", "on_session"].indexOf(options.setupFutureUsage) < 0) throw IntegrationError("Invalid value for elements(): setupFutureUsage should be off_session or on_session.");
    if (options.mode === "setup" && options.setupFutureUsage) throw IntegrationError("setupFutureUsage cannot be used in setup mode.");
    return new Elements(this, options);
  };
  Client.prototype.createPaymentMethod = function (args) {
    var elements = args && args.elements;
    calls.push({ call: "createPaymentMethod" });
    if (!(elements instanceof Elements)) throw IntegrationError("createPaymentMethod: pass the Elements instance as elements.");
    if (elements._options.paymentMethodCreation !== "manual") {
      return Promise.reject(IntegrationError("createPaymentMethod with elements needs paymentMethodCreation: 'manual' in elements()."));
    }
    if (!elements._submitted) {
      return Promise.resolve({ error: { type: "invalid_request_error", message: "elements.submit() must be called before stripe.createPaymentMethod()." } });
    }
    return post(API + "/v1/payment_methods", {
      key: this._key,
      type: "card",
      "card[number]": elements._element.number(),
      "card[exp_month]": "12",
      "card[exp_year]": "2034",
      "card[cvc]": "123"
    }).then(function (answer) {
      return answer.ok ? { paymentMethod: answer.json } : { error: answer.json.error };
    });
  };
  Client.prototype.handleNextAction = function (args) {
    var secret = args && args.clientSecret;
    calls.push({ call: "handleNextAction", clientSecret: secret });
    var match = /^(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+$/.exec(secret || "");
    if (!match) throw IntegrationError("Invalid value for handleNextAction: clientSecret should be a PaymentIntent client secret.");
    return challenge().then(function (outcome) {
      return post(CONTROLS + "/_test/payment_intents/" + match[1] + "/authenticate", {
        client_secret: secret,
        outcome: outcome
      });
    }).then(function (answer) {
      if (!answer.ok) return { error: answer.json.error };
      if (answer.json.status === "requires_payment_method") {
        return {
          error: {
            type: "card_error",
            code: "payment_intent_authentication_failure",
            message: "We are unable to authenticate your payment method. Please choose a different payment method and try again.",
            payment_intent: answer.json
          }
        };
      }
      return { paymentIntent: answer.json };
    });
  };

  // stripe.confirmCardSetup(clientSecret, {payment_method: "pm_..."}): confirm a SetupIntent
  // with an existing PaymentMethod (or the one already on the SetupIntent), running 3-D
  // Secure when the card asks for it.
  Client.prototype.confirmCardSetup = function (clientSecret, data, options) {
    calls.push({ call: "confirmCardSetup", clientSecret: clientSecret, data: data === undefined ? null : JSON.parse(JSON.stringify(data)) });
    var match = /^(seti_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+$/.exec(typeof clientSecret === "string" ? clientSecret : "");
    if (!match) throw IntegrationError("Invalid value for confirmCardSetup intent secret: value should be a client_secret string. You specified: " + clientSecret + ".");
    if (data !== undefined && (data === null || typeof data !== "object")) throw IntegrationError("Invalid value for confirmCardSetup: data should be an object.");
    var method = data && data.payment_method;
    if (method !== undefined && typeof method !== "string") throw IntegrationError("The double confirms with an existing PaymentMethod id only (payment_method: 'pm_...').");
    if (method !== undefined && !/^pm_[A-Za-z0-9_]+$/.test(method)) throw IntegrationError("Invalid value for confirmCardSetup: payment_method should be a PaymentMethod id.");
    if (options && options.handleActions === false) throw IntegrationError("The double handles actions itself (handleActions: false is not supported).");
    var id = match[1];
    var fields = { key: this._key, client_secret: clientSecret };
    if (method) fields.payment_method = method;
    return post(API + "/v1/setup_intents/" + id + "/confirm", fields).then(function (answer) {
      if (!answer.ok) return { error: answer.json.error };
      if (answer.json.status !== "requires_action") return { setupIntent: answer.json };
      return challenge().then(function (outcome) {
        // A test control on Stripe's API host (not Stripe's API): the buyer's answer.
        return post(API + "/_test/setup_intents/" + id + "/authenticate", {
          client_secret: clientSecret,
          outcome: outcome
        });
      }).then(function (answered) {
        if (!answered.ok) return { error: answered.json.error };
        if (answered.json.status === "requires_payment_method") {
          return {
            error: {
              type: "invalid_request_error",
              code: "setup_intent_authentication_failure",
              message: "We are unable to authenticate your payment method. Please choose a different payment method and try again.",
              setup_intent: answered.json
            }
          };
        }
        return { setupIntent: answered.json };
      });
    });
  };

  // Stripe's 3-D Secure test page in a modal: "Complete" or "Fail" the authentication.
  // Closing it (Escape) fails it, as closing Stripe's modal does.
  function challenge() {
    return new Promise(function (resolve) {
      var dialog = document.createElement("dialog");
      dialog.id = "stripe-double-3ds";
      dialog.setAttribute("aria-label", "3D Secure test payment page");
      var heading = document.createElement("h2");
      heading.textContent = "3D Secure test payment page";
      dialog.appendChild(heading);
      [["complete", "Complete"], ["fail", "Fail"]].forEach(function (choice) {
        var button = document.createElement("button");
        button.type = "button";
        button.id = "stripe-double-3ds-" + choice[0];
        button.textContent = choice[1];
        button.addEventListener("click", function () {
          dialog.close();
          dialog.remove();
          resolve(choice[0]);
        });
        dialog.appendChild(button);
      });
      dialog.addEventListener("cancel", function (event) {
        event.preventDefault();
        dialog.close();
        dialog.remove();
        resolve("fail");
      });
      document.body.appendChild(dialog);
      dialog.showModal();
    });
  }

  window.Stripe = function (key) {
    if (typeof key !== "string" || !/^pk_(test|live)_/.test(key)) {
      throw IntegrationError("Invalid API Key provided: " + key);
    }
    calls.push({ call: "Stripe", key: key });
    return new Client(key);
  };
})();
