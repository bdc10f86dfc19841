// Ticks the store pages' drop countdowns ("in 2 hours 5 minutes") once a second. The
// server renders the same text, so the page reads the same without this script.
(function () {
  "use strict";
  function words(seconds) {
    if (seconds <= 0) return "now — reload the page";
    var days = Math.floor(seconds / 86400), hours = Math.floor(seconds % 86400 / 3600),
      minutes = Math.floor(seconds % 3600 / 60), secs = seconds % 60;
    var parts = [[days, "day"], [hours, "hour"], [minutes, "minute"], [secs, "second"]]
      .filter(function (p) { return p[0] > 0; }).slice(0, 2)
      .map(function (p) { return p[0] + " " + p[1] + (p[0] === 1 ? "" : "s"); });
    return "in " + parts.join(" ");
  }
  var nodes = document.querySelectorAll("[data-countdown]");
  if (!nodes.length) return;
  function tick() {
    var now = Date.now();
    nodes.forEach(function (node) {
      var at = Date.parse(node.getAttribute("data-countdown"));
      node.textContent = words(Math.round((at - now) / 1000));
    });
  }
  tick();
  setInterval(tick, 1000);
})();
