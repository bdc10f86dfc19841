// The demo page listens to the embedded checkout, as a creator's site would.
document.addEventListener("stallholder:complete", function (event) {
  var status = document.getElementById("embed-status");
  if (status) status.textContent = "Paid: " + (event.detail.order || event.detail.subscription);
});
