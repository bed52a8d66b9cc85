// "Compare with the export": POST the visitor's input to /v1/models/{slug}/compare and show the
// hosted answer, the export's answer and their difference. Builds the DOM with textContent only.
(function () {
  var form = document.getElementById("compare-form");
  if (!form || !window.fetch || !window.FileReader) return;
  var out = document.getElementById("compare-result");

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function num(x) { return typeof x === "number" ? Number(x.toPrecision(4)).toString() : String(x); }
  function summary(p) {
    if (!p) return "—";
    if (p.mask !== undefined) {
      var box = el("div");
      var img = el("img");
      img.src = "data:image/png;base64," + p.mask;
      img.alt = "mask";
      img.className = "compare-mask";
      box.appendChild(img);
      box.appendChild(el("div", (p.classes || []).map(function (c) {
        return c.label + " " + (100 * c.fraction).toFixed(2) + "%"; }).join(", ")));
      return box;
    }
    if (p.label !== undefined) return p.label + (p.score !== undefined ? " (score " + num(p.score) + ")" : "");
    if (p.value !== undefined) return num(p.value);
    if (p.detections !== undefined) return p.detections.length + " boxes: " +
      p.detections.map(function (d) { return d.label + " " + num(d.score); }).join(", ");
    return JSON.stringify(p);
  }
  function diffText(d) {
    if (!d) return "—";
    var parts = [];
    if (d.same_label !== undefined) parts.push(d.same_label ? "same label" : "DIFFERENT label");
    if (d.score_diff !== undefined) parts.push("score " + (d.score_diff >= 0 ? "+" : "") + num(d.score_diff));
    if (d.value_diff !== undefined) parts.push("value " + (d.value_diff >= 0 ? "+" : "") + num(d.value_diff));
    if (d.pixels_equal !== undefined) parts.push((100 * d.pixels_equal).toFixed(2) + "% of pixels equal");
    if (d.detections !== undefined) parts.push(d.detections[0] + " vs " + d.detections[1] + " boxes" + (d.same_labels ? "" : ", labels differ"));
    if (d.cosine !== undefined) parts.push("cosine " + num(d.cosine));
    return parts.join("; ") || "—";
  }
  function show(r) {
    out.textContent = "";
    var hosted = (r.hosted.predictions || r.hosted.embeddings || []);
    var exported = (r.export.predictions || r.export.embeddings || []);
    var diffs = r.difference.predictions || [];
    var d = r.difference;
    var headline = d.same_answer ? "Same answer" : d.same_labels ? "Same labels, slightly different scores"
      : "The answers differ";
    out.appendChild(el("p", headline + " — hosted model vs the " + r.target + " " + r.precision +
      " export.", d.same_answer || d.same_labels ? "compare-same" : "compare-differs"));
    var table = el("table", null, "compare-table");
    var head = el("tr");
    ["", "hosted model", r.target + " " + r.precision + " export", "difference"].forEach(function (h) {
      head.appendChild(el("th", h)); });
    table.appendChild(head);
    var n = Math.max(hosted.length, exported.length);
    for (var i = 0; i < n; i++) {
      var tr = el("tr");
      tr.appendChild(el("td", "#" + (i + 1)));
      [hosted[i], exported[i]].forEach(function (p) {
        var td = el("td");
        var s = Array.isArray(p) ? "[" + p.slice(0, 4).map(num).join(", ") + ", …]" : summary(p);
        if (typeof s === "string") td.textContent = s; else td.appendChild(s);
        tr.appendChild(td);
      });
      tr.appendChild(el("td", diffText(diffs[i])));
      table.appendChild(tr);
    }
    out.appendChild(table);
    var outs = r.difference.outputs || {};
    var names = Object.keys(outs);
    if (names.length) {
      out.appendChild(el("p", "Raw outputs: " + names.map(function (k) {
        return k + " max |diff| " + num(outs[k].max_abs_diff) + ", mean " + num(outs[k].mean_abs_diff);
      }).join("; "), "muted"));
    }
    out.appendChild(el("p", r.remaining_text, "muted"));
    var raw = el("details");
    raw.appendChild(el("summary", "Both answers as JSON"));
    raw.appendChild(el("pre", JSON.stringify({hosted: r.hosted, export: r.export, difference: r.difference}, null, 2)));
    out.appendChild(raw);
  }
  function fail(msg) { out.textContent = ""; out.appendChild(el("p", msg, "error")); }
  function send(input) {
    var choice = document.getElementById("compare-export").value.split(":");
    out.textContent = "Running both models…";
    fetch("/v1/models/" + encodeURIComponent(form.dataset.slug) + "/compare", {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({target: choice[0], precision: choice[1], input: input})
    }).then(function (resp) {
      return resp.json().then(function (body) {
        if (!resp.ok) fail((body.error && body.error.message) || ("error " + resp.status));
        else show(body);
      });
    }).catch(function () { fail("the comparison failed; check the connection and retry"); });
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var control = form.dataset.control;
    if (control === "image" || control === "audio") {
      var file = document.getElementById("compare-file").files[0];
      if (!file) { fail("choose a file first"); return; }
      var reader = new FileReader();
      reader.onload = function () {
        var b64 = String(reader.result).split(",")[1] || "";
        var body = {};
        body[control] = b64;
        send(body);
      };
      reader.readAsDataURL(file);
    } else if (control === "text") {
      send({texts: [document.getElementById("compare-text").value]});
    } else {
      try { send(JSON.parse(document.getElementById("compare-body").value)); }
      catch (e) { fail("the request body is not JSON: " + e.message); }
    }
  });
})();
