/* colloquy's HTTP API as the page uses it: JSON calls, a turn streamed as server-sent events
 * (stoppable: aborting the fetch closes the connection, and the server stops the model call and
 * stores what was generated), and the errors a person is shown. */
(function () {
  "use strict";

  var session = { token: null, onSignedOut: null };

  function ApiError(status, type, message, retryAfter) {
    this.status = status; this.type = type; this.message = message; this.retryAfter = retryAfter;
  }

  /* Why a request was refused, in words a person can act on. */
  function explain(status, err, retryAfter) {
    var message = err.message || ("HTTP " + status);
    if (status === 429 && retryAfter) message += " (try again in " + retryAfter + " s)";
    return message;
  }

  async function failure(r, path) {
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    var err = (data && data.error) || {};
    var retry = r.headers.get("Retry-After");
    if (r.status === 401 && path !== "/v1/me" && session.onSignedOut) {
      session.onSignedOut("Your session ended: sign in again.");
    }
    return new ApiError(r.status, err.type || "http_error", explain(r.status, err, retry), retry);
  }

  function headers(json) {
    var h = { "Authorization": "Bearer " + session.token };
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function call(method, path, body) {
    var init = { method: method, headers: headers(body !== undefined) };
    if (body !== undefined) init.body = JSON.stringify(body);
    var r = await fetch(path, init);
    if (r.status === 204) return null;
    if (!r.ok) throw await failure(r, path);
    return r.json();
  }

  /* POST ``body`` (with stream: true) to a turn route and hand each server-sent event to
   * ``onEvent(name, data)``. ``signal`` (an AbortSignal) stops it: the connection closes. */
  async function stream(path, body, onEvent, signal) {
    var r = await fetch(path, {
      method: "POST", headers: headers(true), signal: signal,
      body: JSON.stringify(Object.assign({ stream: true }, body))
    });
    if (!r.ok) throw await failure(r, path);
    var reader = r.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        var block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        var name = "message", data = [];
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) name = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data.push(line.slice(5).trim());
        });
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  async function download(path) {
    var r = await fetch(path, { headers: headers(false) });
    if (!r.ok) throw await failure(r, path);
    return r.blob();
  }

  /* A fresh idempotency key: one per message, reused when the same message is sent again
   * after a failure, so the server stores it once. */
  function newKey() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "web-" + Array.prototype.map.call(bytes, function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  function conversationPath(id, rest) {
    return "/v1/conversations/" + encodeURIComponent(id) + (rest || "");
  }

  window.colloquyApi = {
    session: session, ApiError: ApiError, call: call, stream: stream, download: download,
    newKey: newKey, conversationPath: conversationPath
  };
})();
