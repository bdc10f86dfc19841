/* Stallholder embedded checkout. One tag on any page:
 *   <script src="https://pay.example/embed.js" data-publishable-key="pk_..."></script>
 * turns <button data-stallholder-price="price_..." [data-quantity="2"]> and
 * <a data-stallholder-link href="https://pay.example/l/plink_..."> into buttons that open
 * the hosted checkout in an overlay. The page hears "stallholder:complete" and
 * "stallholder:close" as DOM events on document (event.detail: {session, order?,
 * subscription?}), and only from the checkout's own origin. No dependencies. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var base = new URL(script.src).origin;
  var key = script.getAttribute("data-publishable-key") || "";
  var overlay = null;
  var frame = null;

  function close() {
    if (overlay) overlay.parentNode.removeChild(overlay);
    overlay = null;
    frame = null;
  }

  function open(url) {
    close();
    overlay = document.createElement("div");
    overlay.setAttribute("data-stallholder-overlay", "");
    overlay.setAttribute("role", "dialog");
    overlay.setAttribute("aria-modal", "true");
    overlay.setAttribute("aria-label", "Checkout");
    overlay.style.cssText = "position:fixed;inset:0;z-index:2147483647;background:rgba(20,18,16,.55);" +
      "display:flex;align-items:center;justify-content:center";
    frame = document.createElement("iframe");
    frame.title = "Checkout";
    frame.src = url + (url.indexOf("?") < 0 ? "?" : "&") + "embed=1&origin=" +
      encodeURIComponent(window.location.origin);
    frame.style.cssText = "border:0;border-radius:12px;background:#faf8f5;width:min(30rem,100%);" +
      "height:min(46rem,100%)";
    overlay.appendChild(frame);
    overlay.addEventListener("click", function (event) { if (event.target === overlay) close(); });
    document.body.appendChild(overlay);
    frame.focus();
  }

  function fail(button, message) {
    button.removeAttribute("aria-busy");
    document.dispatchEvent(new CustomEvent("stallholder:error", { detail: { message: message } }));
    if (window.console) window.console.error("Stallholder checkout: " + message);
  }

  function startPrice(button) {
    button.setAttribute("aria-busy", "true");
    var line = { price: button.getAttribute("data-stallholder-price"),
      quantity: parseInt(button.getAttribute("data-quantity") || "1", 10) };
    var body = { line_items: [line] };
    if (button.getAttribute("data-success-url")) body.success_url = button.getAttribute("data-success-url");
    fetch(base + "/v1/checkout/sessions", {
      method: "POST",
      headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json",
        "Idempotency-Key": "embed-" + Date.now() + "-" + Math.random().toString(36).slice(2) },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (json) {
        if (!response.ok) return fail(button, json.detail || ("HTTP " + response.status));
        button.removeAttribute("aria-busy");
        open(base + "/pay/" + encodeURIComponent(json.id));
      });
    }, function () { fail(button, "the checkout could not be reached"); });
  }

  window.addEventListener("message", function (event) {
    // Only the checkout in our own overlay speaks; anything else is ignored.
    if (event.origin !== base || !frame || event.source !== frame.contentWindow) return;
    var data = event.data;
    if (!data || (data.type !== "stallholder:complete" && data.type !== "stallholder:close")) return;
    var detail = { session: data.session, order: data.order, subscription: data.subscription };
    if (data.type === "stallholder:close") close();
    document.dispatchEvent(new CustomEvent(data.type, { detail: detail }));
  });

  document.addEventListener("keydown", function (event) { if (event.key === "Escape" && overlay) close(); });

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    var button = target && target.closest("[data-stallholder-price],[data-stallholder-link]");
    if (!button) return;
    event.preventDefault();
    if (button.hasAttribute("data-stallholder-price")) return startPrice(button);
    var link = button.getAttribute("data-stallholder-link") || button.getAttribute("href") || "";
    if (link.indexOf("/l/") < 0) link = base + "/l/" + link;
    open(link);
  });
})();
