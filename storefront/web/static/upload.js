// Upload with a progress bar; without JavaScript the form posts as usual.
(function () {
  var form = document.getElementById("upload");
  if (!form || !window.XMLHttpRequest || !window.FormData) return;
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var bar = document.getElementById("progress");
    var text = document.getElementById("progress-text");
    var xhr = new XMLHttpRequest();
    bar.hidden = false;
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        text.textContent = bar.value + "% sent";
      }
    };
    xhr.upload.onload = function () { text.textContent = "sent; reviewing the model…"; };
    xhr.onload = function () { window.location.assign(xhr.responseURL || "/seller"); };
    xhr.onerror = function () { text.textContent = "upload failed; check the connection and retry"; };
    xhr.open("POST", form.action);
    xhr.send(new FormData(form));
  });
})();
