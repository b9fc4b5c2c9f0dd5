/*
 * Feedback widget for chat answers: plain JavaScript, no build step, no dependencies.
 *
 *   <script src="https://api.example/widget.js" data-api-key="fbk_..." data-variant="thumbs"></script>
 *   <div data-feedback-widget data-query="..." data-response="..." data-model-name="chat"
 *        data-model-version="v3" data-session-id="s-42"></div>
 *
 * or, for answers rendered later:  FeedbackWidget.mount(element, {query, response, model_name, model_version,
 * session_id, user_id, variant, apiKey, endpoint}).
 *
 * Variants: "thumbs" (up/down, sent on click), "stars" (1-5 radiogroup: arrow keys choose, Enter/Space/click send),
 * "full" (thumbs + stars + comment + submit). Feedback is POSTed to /v1/feedback on the origin the script was
 * loaded from, with an Idempotency-Key per answer and action, so double clicks and retries store one row.
 */
(function () {
  "use strict";
  if (window.FeedbackWidget && window.FeedbackWidget.mount) return; // included twice: keep the first

  var script = document.currentScript;
  var scriptOrigin = script && script.src ? new URL(script.src, location.href).origin : location.origin;
  var defaults = {
    endpoint: scriptOrigin,
    apiKey: script ? script.getAttribute("data-api-key") : null,
    variant: (script && script.getAttribute("data-variant")) || "thumbs"
  };
  var VARIANTS = { thumbs: 1, stars: 1, full: 1 };
  var STAR_WORDS = ["", "1 star, poor", "2 stars, fair", "3 stars, good", "4 stars, very good", "5 stars, excellent"];
  var counter = 0;

  var CSS = [
    ".fbw{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2937;display:flex;",
    "flex-wrap:wrap;align-items:center;gap:8px 12px;margin:8px 0 0}",
    ".fbw *{box-sizing:border-box}",
    ".fbw-label{color:#4b5563;font-size:13px}",
    ".fbw-group{display:inline-flex;gap:4px;align-items:center}",
    ".fbw-btn{font:inherit;display:inline-flex;align-items:center;justify-content:center;gap:4px;min-width:34px;",
    "height:32px;padding:0 10px;border:1px solid #d1d5db;border-radius:8px;background:#fff;color:#374151;",
    "cursor:pointer;transition:background .12s,border-color .12s}",
    ".fbw-btn:hover{background:#f3f4f6;border-color:#9ca3af}",
    ".fbw-btn:focus-visible,.fbw-star:focus-visible,.fbw-comment:focus-visible{outline:3px solid #2563eb;",
    "outline-offset:2px}",
    ".fbw-btn[aria-pressed=true]{background:#eff6ff;border-color:#2563eb;color:#1d4ed8}",
    ".fbw-btn[disabled]{opacity:.6;cursor:default}",
    ".fbw-btn svg{width:16px;height:16px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;",
    "stroke-linejoin:round}",
    ".fbw-btn[aria-pressed=true] svg{fill:#bfdbfe}",
    ".fbw-thumb[data-rating=down][aria-pressed=true]{background:#fef2f2;border-color:#dc2626;color:#b91c1c}",
    ".fbw-thumb[data-rating=down][aria-pressed=true] svg{fill:#fecaca}",
    ".fbw-submit{background:#2563eb;border-color:#2563eb;color:#fff;font-weight:600}",
    ".fbw-submit:hover{background:#1d4ed8;border-color:#1d4ed8}",
    ".fbw-stars{display:inline-flex;gap:2px}",
    ".fbw-star{font:inherit;font-size:22px;line-height:1;width:30px;height:30px;padding:0;border:0;",
    "border-radius:6px;background:transparent;color:#d1d5db;cursor:pointer}",
    ".fbw-star.fbw-on{color:#f59e0b}",
    ".fbw-stars:hover .fbw-star{color:#fcd34d}",
    ".fbw-stars .fbw-star:hover~.fbw-star{color:#d1d5db}",
    ".fbw-comment-wrap{flex:1 1 100%;display:flex;flex-direction:column;gap:4px}",
    ".fbw-comment{font:inherit;width:100%;min-height:64px;padding:8px 10px;border:1px solid #d1d5db;",
    "border-radius:8px;resize:vertical;color:#111827;background:#fff}",
    ".fbw-actions{flex:1 1 100%;display:flex;align-items:center;gap:12px}",
    ".fbw-status{font-size:13px;min-height:1em}",
    ".fbw-status.fbw-ok{color:#047857}",
    ".fbw-status.fbw-error{color:#b91c1c}",
    ".fbw-sr{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0,0,0,0);",
    "white-space:nowrap;border:0}"
  ].join("");

  var ICONS = {
    up: '<path d="M7 10v11H3V10h4zm0 0l4-8a3 3 0 0 1 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.4 8A2 2 0 0 1 18.1 21H7"/>',
    down: '<path d="M17 14V3h4v11h-4zm0 0l-4 8a3 3 0 0 1-3-3v-4H4.5a2 2 0 0 1-2-2.3l1.4-8A2 2 0 0 1 5.9 3H17"/>'
  };

  function injectStyle() {
    if (document.getElementById("fbw-style")) return;
    var style = document.createElement("style");
    style.id = "fbw-style";
    style.textContent = CSS;
    (document.head || document.documentElement).appendChild(style);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text != null) node.textContent = text;
    return node;
  }

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
  }

  function hash(text) { // short stable digest of the comment for the Idempotency-Key (FNV-1a, 32 bit)
    var h = 0x811c9dc5;
    for (var i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    return h.toString(16);
  }

  function thumbButton(value) {
    var button = el("button", { type: "button", "class": "fbw-btn fbw-thumb", "aria-pressed": "false",
      "aria-label": value === "up" ? "Good answer (thumbs up)" : "Bad answer (thumbs down)", "data-rating": value });
    button.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true">' + ICONS[value] + "</svg>";
    return button;
  }

  function starGroup(uid, onCommit, onChange) {
    var wrap = el("div", { "class": "fbw-group" });
    wrap.appendChild(el("span", { "class": "fbw-label", "aria-hidden": "true" }, "Rating"));
    var group = el("div", { role: "radiogroup", "class": "fbw-stars",
      "aria-label": "Rate this answer from 1 to 5 stars", "aria-describedby": uid + "-stars-hint" });
    var hint = el("span", { id: uid + "-stars-hint", "class": "fbw-sr" },
      onCommit ? "Arrow keys choose, Enter or Space sends." : "Arrow keys choose.");
    var stars = [], value = 0;
    function render() {
      stars.forEach(function (star, i) {
        var n = i + 1;
        star.setAttribute("aria-checked", String(n === value));
        star.tabIndex = n === (value || 1) ? 0 : -1;
        star.classList.toggle("fbw-on", n <= value);
      });
    }
    function choose(n, focus) {
      value = Math.max(1, Math.min(5, n));
      render();
      if (focus) stars[value - 1].focus();
      if (onChange) onChange(value);
    }
    for (var n = 1; n <= 5; n++) {
      var star = el("button", { type: "button", role: "radio", "class": "fbw-star", "aria-label": STAR_WORDS[n],
        "data-stars": String(n) }, "\u2605");
      star.addEventListener("click", (function (n) {
        return function () { choose(n, false); if (onCommit) onCommit(value); };
      })(n));
      star.addEventListener("keydown", function (event) {
        var step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[event.key];
        var at = Number(event.currentTarget.getAttribute("data-stars")); // APG: arrows move from the focused radio
        if (step) { event.preventDefault(); choose(at + step, true); }
        else if (event.key === "Home") { event.preventDefault(); choose(1, true); }
        else if (event.key === "End") { event.preventDefault(); choose(5, true); }
      });
      stars.push(star);
      group.appendChild(star);
    }
    render();
    wrap.appendChild(group);
    return { node: wrap, hint: hint, get: function () { return value; } };
  }

  function mount(target, options) {
    if (typeof target === "string") target = document.querySelector(target);
    if (!target) throw new Error("FeedbackWidget.mount: no element to mount into");
    var o = {};
    [defaults, options || {}].forEach(function (src) {
      Object.keys(src).forEach(function (k) { if (src[k] != null && src[k] !== "") o[k] = src[k]; });
    });
    var variant = VARIANTS[o.variant] ? o.variant : "thumbs";
    var answerId = o.answer_id || randomId();
    var uid = "fbw-" + (++counter);
    var inFlight = {};
    injectStyle();

    var root = el("div", { "class": "fbw fbw-" + variant, role: "group", "aria-label": "Feedback on this answer" });
    var status = el("p", { "class": "fbw-status", role: "status", "aria-live": "polite" });

    function say(text, ok) {
      status.textContent = text;
      status.className = "fbw-status " + (ok ? "fbw-ok" : "fbw-error");
      status.setAttribute("role", ok ? "status" : "alert");
    }

    function send(action, fields) {
      if (!o.apiKey) { say("Feedback is not configured (no API key).", false); return Promise.resolve(false); }
      var key = answerId + ":" + action;
      if (inFlight[key]) return inFlight[key];
      var record = { query: o.query, response: o.response, model_name: o.model_name, model_version: o.model_version,
        session_id: o.session_id, user_id: o.user_id, metadata: { widget_variant: variant } };
      Object.keys(fields).forEach(function (k) { record[k] = fields[k]; });
      Object.keys(record).forEach(function (k) { if (record[k] == null || record[k] === "") delete record[k]; });
      say("Sending\u2026", true);
      inFlight[key] = fetch(o.endpoint.replace(/\/$/, "") + "/v1/feedback", {
        method: "POST", mode: "cors", credentials: "omit",
        headers: { "Content-Type": "application/json", "Authorization": "Bearer " + o.apiKey, "Idempotency-Key": key },
        body: JSON.stringify(record)
      }).then(function (response) {
        if (response.ok) { say("Thanks \u2014 your feedback was sent.", true); return true; }
        return response.json().catch(function () { return null; }).then(function (body) {
          var reason = body && body.errors && body.errors[0] ? body.errors[0].reason : "HTTP " + response.status;
          say("Sorry, your feedback could not be sent: " + reason, false);
          return false;
        });
      }, function () {
        say("Sorry, your feedback could not be sent (network or CORS error).", false);
        return false;
      }).then(function (ok) { delete inFlight[key]; return ok; });
      return inFlight[key];
    }

    var thumbs = null, stars = null, comment = null;
    if (variant === "thumbs" || variant === "full") {
      thumbs = el("div", { "class": "fbw-group", role: "group", "aria-label": "Was this answer helpful?" });
      thumbs.appendChild(el("span", { "class": "fbw-label", "aria-hidden": "true" }, "Helpful?"));
      ["up", "down"].forEach(function (value) {
        var button = thumbButton(value);
        button.addEventListener("click", function () {
          var pressed = button.getAttribute("aria-pressed") === "true";
          thumbs.querySelectorAll(".fbw-thumb").forEach(function (b) { b.setAttribute("aria-pressed", "false"); });
          if (variant === "full") { button.setAttribute("aria-pressed", String(!pressed)); return; }
          button.setAttribute("aria-pressed", "true");
          send("thumb:" + value, { rating: value });
        });
        thumbs.appendChild(button);
      });
      root.appendChild(thumbs);
    }
    if (variant === "stars" || variant === "full") {
      stars = starGroup(uid, variant === "stars" ? function (n) { send("stars:" + n, { stars: n }); } : null);
      root.appendChild(stars.node);
      root.appendChild(stars.hint);
    }
    if (variant === "full") {
      var wrap = el("div", { "class": "fbw-comment-wrap" });
      var label = el("label", { "for": uid + "-comment", "class": "fbw-label" }, "What could be better? (optional)");
      comment = el("textarea", { id: uid + "-comment", "class": "fbw-comment", maxlength: "4000", rows: "3" });
      wrap.appendChild(label);
      wrap.appendChild(comment);
      root.appendChild(wrap);
      var actions = el("div", { "class": "fbw-actions" });
      var submit = el("button", { type: "button", "class": "fbw-btn fbw-submit" }, "Send feedback");
      submit.addEventListener("click", function () {
        var pressed = thumbs.querySelector('[aria-pressed="true"]');
        var thumb = pressed ? pressed.getAttribute("data-rating") : null;
        var n = stars.get(), text = comment.value.trim();
        if (!thumb && !n && !text) { say("Choose a rating or write a comment first.", false); return; }
        var fields = { comment: text || null };
        if (n) fields.stars = n; else if (thumb) fields.rating = thumb;
        if (n && thumb) fields.metadata = { widget_variant: variant, thumb: thumb };
        submit.disabled = true;
        send("full:" + (thumb || "-") + ":" + (n || "-") + ":" + hash(text), fields).then(function () {
          submit.disabled = false;
        });
      });
      actions.appendChild(submit);
      actions.appendChild(status);
      root.appendChild(actions);
    } else {
      root.appendChild(status);
    }
    target.appendChild(root);
    return root;
  }

  function autoMount() {
    document.querySelectorAll("[data-feedback-widget]").forEach(function (node) {
      if (node.getAttribute("data-feedback-mounted")) return;
      node.setAttribute("data-feedback-mounted", "1");
      mount(node, { query: node.getAttribute("data-query"), response: node.getAttribute("data-response"),
        model_name: node.getAttribute("data-model-name"), model_version: node.getAttribute("data-model-version"),
        session_id: node.getAttribute("data-session-id"), user_id: node.getAttribute("data-user-id"),
        answer_id: node.getAttribute("data-answer-id"), variant: node.getAttribute("data-variant") });
    });
  }

  window.FeedbackWidget = { mount: mount, mountAll: autoMount, defaults: defaults };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoMount);
  else autoMount();
})();
