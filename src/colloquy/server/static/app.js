/* colloquy's web chat page: plain JavaScript over the HTTP API, no build step, no CDN.
 *
 * Every text from the server (titles, messages, facts) reaches the page through textContent or
 * the safe Markdown renderer (markdown.js), never through innerHTML.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "colloquy.token";
  var $ = function (id) { return document.getElementById(id); };
  var state = { token: null, user: null, conversations: [], current: null, busy: false, pending: null,
                features: { memory: false, deleteMe: false } };

  // -- the API ------------------------------------------------------------------------------------

  function ApiError(status, type, message) {
    this.status = status; this.type = type; this.message = message;
  }

  async function api(method, path, body) {
    var init = { method: method, headers: { "Authorization": "Bearer " + state.token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var r = await fetch(path, init);
    if (r.status === 204) return null;
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      var err = (data && data.error) || {};
      if (r.status === 401 && path !== "/v1/me") signOut("Your session ended: sign in again.");
      throw new ApiError(r.status, err.type || "http_error", err.message || ("HTTP " + r.status));
    }
    return data;
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

  /* POST a message with stream: true and hand each server-sent event to onEvent. */
  async function streamTurn(conversationId, content, key, onEvent) {
    var r = await fetch("/v1/conversations/" + encodeURIComponent(conversationId) + "/messages", {
      method: "POST",
      headers: { "Authorization": "Bearer " + state.token, "Content-Type": "application/json" },
      body: JSON.stringify({ content: content, stream: true, idempotency_key: key })
    });
    if (!r.ok) {
      var data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      var err = (data && data.error) || {};
      throw new ApiError(r.status, err.type || "http_error", err.message || ("HTTP " + r.status));
    }
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

  // -- rendering --------------------------------------------------------------------------------

  function money(x) {
    if (x === null || x === undefined) return "price unknown";
    return "$" + Number(x).toFixed(x < 0.01 ? 6 : 4);
  }

  function usageLine(usage, cost) {
    if (!usage) return "";
    var cache = usage.cache_read_tokens || usage.cache_write_tokens
      ? " · cache r/w " + usage.cache_read_tokens + "/" + usage.cache_write_tokens : "";
    return "in " + usage.input_tokens + " · out " + usage.output_tokens + " tokens" + cache +
      " · " + money(cost);
  }

  function setBody(node, role, text) {
    node.textContent = "";
    node.appendChild(window.colloquyMarkdown.render(text));
  }

  function messageItem(role, text, usage, cost) {
    var li = document.createElement("li");
    li.className = "message " + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("div");
    body.className = "body";
    setBody(body, role, text);
    var meta = document.createElement("div");
    meta.className = "meta turn-meta";
    meta.textContent = usageLine(usage, cost);
    li.appendChild(who); li.appendChild(body); li.appendChild(meta);
    $("messages").appendChild(li);
    li.scrollIntoView({ block: "end" });
    return { li: li, body: body, meta: meta };
  }

  function renderConversations() {
    var ul = $("conversations");
    ul.textContent = "";
    if (!state.conversations.length) {
      var empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "No conversations yet.";
      ul.appendChild(empty);
    }
    state.conversations.forEach(function (c) {
      var li = document.createElement("li");
      var b = document.createElement("button");
      b.className = "conversation";
      b.dataset.id = c.id;
      if (state.current && state.current.id === c.id) b.setAttribute("aria-current", "true");
      var title = document.createElement("span");
      title.className = "title";
      title.textContent = c.title || "New chat";
      var meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = c.message_count + " messages · " +
        new Date(c.updated_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
      b.appendChild(title); b.appendChild(meta);
      b.addEventListener("click", function () { openConversation(c.id); closeSidebar(); });
      li.appendChild(b);
      ul.appendChild(li);
    });
  }

  function renderSessionCost(messages) {
    var tokens = 0, cost = 0, unknown = false;
    messages.forEach(function (m) {
      if (!m.usage) return;
      tokens += m.usage.input_tokens + m.usage.output_tokens + m.usage.cache_read_tokens +
        m.usage.cache_write_tokens;
      if (m.cost_usd === null || m.cost_usd === undefined) unknown = true; else cost += m.cost_usd;
    });
    $("session-cost").textContent = messages.length
      ? "This conversation: " + tokens + " tokens · " + (unknown ? "price unknown" : money(cost)) : "";
  }

  function showError(id, text) { $(id).textContent = text || ""; }

  // -- conversations ---------------------------------------------------------------------------

  async function loadConversations() {
    state.conversations = (await api("GET", "/v1/conversations")).conversations;
    renderConversations();
  }

  function showConversationHeader() {
    var c = state.current;
    $("chat-title").textContent = c ? (c.title || "New chat") : "New chat";
    $("rename-chat").hidden = !c;
    $("delete-chat").hidden = !c;
  }

  async function openConversation(id) {
    showError("chat-error", "");
    var detail;
    try { detail = await api("GET", "/v1/conversations/" + encodeURIComponent(id)); }
    catch (e) {
      if (e.status === 404) { newChat(); return; }
      showError("chat-error", e.message); return;
    }
    state.current = detail;
    history.replaceState(null, "", "#" + encodeURIComponent(id));
    $("messages").textContent = "";
    detail.messages.forEach(function (m) {
      if (m.text) messageItem(m.role, m.text, m.usage, m.cost_usd);
    });
    // Side calls (summaries, fact extraction, title) carry usage and cost like replies do.
    state.currentMessages = detail.messages.concat(detail.side_calls || []);
    renderSessionCost(state.currentMessages);
    showConversationHeader();
    renderConversations();
    $("input").focus();
  }

  function newChat() {
    state.current = null;
    state.currentMessages = [];
    history.replaceState(null, "", location.pathname);
    $("messages").textContent = "";
    renderSessionCost([]);
    showConversationHeader();
    renderConversations();
    $("input").focus();
  }

  async function send() {
    var input = $("input");
    var text = input.value;
    if (!text.trim() || state.busy) return;
    state.busy = true;
    $("send").disabled = true;
    showError("chat-error", "");
    try {
      if (!state.current) {
        var conv = await api("POST", "/v1/conversations", {});
        state.current = Object.assign(conv, { messages: [] });
        state.currentMessages = [];
        history.replaceState(null, "", "#" + encodeURIComponent(conv.id));
        showConversationHeader();
      }
      // The message's key: the unanswered message sent again keeps the key it was sent with.
      var p = state.pending;
      if (!p || p.conversation !== state.current.id || p.text !== text) {
        p = state.pending = { conversation: state.current.id, text: text, key: newKey() };
      }
      input.value = "";
      var mine = messageItem("user", text);
      var answer = messageItem("assistant", "");
      answer.li.classList.add("streaming");
      var sofar = "", started = false;
      await streamTurn(state.current.id, text, p.key, function (event, data) {
        started = true;
        if (event === "delta") {
          sofar += data.text;
          setBody(answer.body, "assistant", sofar);
          answer.li.scrollIntoView({ block: "end" });
        } else if (event === "done") {
          if (state.pending === p) state.pending = null;
          setBody(answer.body, "assistant", data.text);
          answer.meta.textContent = usageLine(data.usage, data.cost_usd);
          state.currentMessages.push({ usage: data.usage, cost_usd: data.cost_usd });
          renderSessionCost(state.currentMessages);
        } else if (event === "error") {
          answer.li.classList.add("failed");
          answer.meta.textContent = "failed: " + data.error.message +
            " (your message is saved; send again to retry)";
          if (!input.value) input.value = text;  // sent again, it keeps its key
        }
      }).catch(function (e) {
        // Refused before the turn began (413, 422, 429, the network): nothing was stored, so
        // no bubble stays behind; the text goes back into the box and the error says why.
        if (!started) { mine.li.remove(); answer.li.remove(); }
        else { answer.li.classList.remove("streaming"); answer.li.classList.add("failed"); }
        throw e;
      });
      answer.li.classList.remove("streaming");
      await loadConversations();
      var fresh = state.conversations.filter(function (c) { return c.id === state.current.id; })[0];
      if (fresh) { state.current.title = fresh.title; showConversationHeader(); }
    } catch (e) {
      showError("chat-error", e instanceof ApiError ? e.message
                : "could not reach the server (" + e.message + ")");
      if (!input.value) input.value = text;
    } finally {
      state.busy = false;
      $("send").disabled = false;
      input.focus();
    }
  }

  async function renameChat() {
    if (!state.current) return;
    var title = window.prompt("Rename conversation", state.current.title || "");
    if (title === null || !title.trim()) return;
    try {
      var c = await api("PATCH", "/v1/conversations/" + encodeURIComponent(state.current.id),
                        { title: title.trim().slice(0, 200) });
      state.current.title = c.title;
      showConversationHeader();
      await loadConversations();
    } catch (e) { showError("chat-error", e.message); }
  }

  async function deleteChat() {
    if (!state.current || !window.confirm("Delete this conversation for good?")) return;
    try {
      await api("DELETE", "/v1/conversations/" + encodeURIComponent(state.current.id));
      newChat();
      await loadConversations();
    } catch (e) { showError("chat-error", e.message); }
  }

  // -- memory -------------------------------------------------------------------------------------

  async function loadFacts() {
    var facts = (await api("GET", "/v1/memory")).facts;
    var ul = $("facts");
    ul.textContent = "";
    if (!facts.length) {
      var empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "Nothing remembered yet.";
      ul.appendChild(empty);
    }
    facts.forEach(function (f) {
      var li = document.createElement("li");
      var text = document.createElement("span");
      text.className = "fact";
      var subject = document.createElement("strong");
      subject.textContent = f.subject ? f.subject + ": " : "";
      text.appendChild(subject);
      text.appendChild(document.createTextNode(f.statement));
      var forget = document.createElement("button");
      forget.className = "small";
      forget.textContent = "Forget";
      forget.setAttribute("aria-label", "Forget: " + f.statement);
      forget.addEventListener("click", async function () {
        try { await api("DELETE", "/v1/memory/" + encodeURIComponent(f.id)); await loadFacts(); }
        catch (e) { showError("chat-error", e.message); }
      });
      li.appendChild(text); li.appendChild(forget);
      ul.appendChild(li);
    });
  }

  function toggleMemory(show) {
    $("memory").hidden = !show;
    if (show) loadFacts().catch(function (e) { showError("chat-error", e.message); });
  }

  // -- delete my data ---------------------------------------------------------------------------

  function askDeleteData() {
    var dialog = $("confirm-delete");
    $("confirm-input").value = "";
    $("confirm-ok").disabled = true;
    dialog.showModal();
    $("confirm-input").focus();
  }

  async function onDeleteDialogClose() {
    if ($("confirm-delete").returnValue !== "delete") return;
    try {
      var report = await api("DELETE", "/v1/me");
      // The account went with the data: the token no longer works.
      history.replaceState(null, "", location.pathname);
      $("memory").hidden = true;
      signOut("All your data was deleted (" + report.conversations + " conversations).");
    } catch (e) { showError("chat-error", e.message); }
  }

  async function exportData() {
    try {
      var r = await fetch("/v1/me/export", { headers: { "Authorization": "Bearer " + state.token } });
      if (!r.ok) throw new ApiError(r.status, "http_error", "export failed: HTTP " + r.status);
      var url = URL.createObjectURL(await r.blob());
      var a = document.createElement("a");
      a.href = url;
      a.download = "colloquy-" + state.user + ".json";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    } catch (e) { showError("chat-error", e.message); }
  }

  // -- sign in and out ----------------------------------------------------------------------------

  async function detectFeatures() {
    try {
      var doc = await (await fetch("/openapi.json")).json();
      state.features.memory = !!doc.paths["/v1/memory"];
      state.features.deleteMe = !!(doc.paths["/v1/me"] && doc.paths["/v1/me"]["delete"]);
      state.features.exportMe = !!doc.paths["/v1/me/export"];
    } catch (e) { /* optional features stay hidden */ }
    $("show-memory").hidden = !state.features.memory;
    $("delete-data").hidden = !state.features.deleteMe;
    $("export-data").hidden = !state.features.exportMe;
  }

  async function signIn(token) {
    state.token = token;
    var me = await api("GET", "/v1/me");
    state.user = me.user_id;
    localStorage.setItem(TOKEN_KEY, token);
    $("whoami").textContent = me.user_id;
    await detectFeatures();
    await loadConversations();
    // Show the app only once it is ready, so nothing typed early is wiped by the first render.
    $("signin").hidden = true;
    $("app").hidden = false;
    var wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) await openConversation(wanted); else newChat();
  }

  function signOut(message) {
    localStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.current = null;
    $("app").hidden = true;
    $("signin").hidden = false;
    $("token").value = "";
    showError("signin-error", message || "");
    $("token").focus();
  }

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("toggle-sidebar").setAttribute("aria-expanded", "false");
  }

  // -- wiring -----------------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      showError("signin-error", "");
      signIn($("token").value.trim()).catch(function (e) {
        state.token = null;
        showError("signin-error", e.status === 401 ? "That token was not accepted." : e.message);
      });
    });
    $("composer").addEventListener("submit", function (ev) { ev.preventDefault(); send(); });
    $("input").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
    });
    $("new-chat").addEventListener("click", function () { newChat(); closeSidebar(); });
    $("rename-chat").addEventListener("click", renameChat);
    $("delete-chat").addEventListener("click", deleteChat);
    $("signout").addEventListener("click", function () { signOut(); });
    $("show-memory").addEventListener("click", function () { toggleMemory($("memory").hidden); });
    $("close-memory").addEventListener("click", function () { toggleMemory(false); });
    $("fact-form").addEventListener("submit", async function (ev) {
      ev.preventDefault();
      try {
        await api("POST", "/v1/memory", { subject: $("fact-subject").value.trim() || null,
                                           statement: $("fact-statement").value.trim() });
        $("fact-subject").value = ""; $("fact-statement").value = "";
        await loadFacts();
      } catch (e) { showError("chat-error", e.message); }
    });
    $("delete-data").addEventListener("click", askDeleteData);
    $("export-data").addEventListener("click", exportData);
    $("confirm-input").addEventListener("input", function () {
      $("confirm-ok").disabled = $("confirm-input").value.trim().toLowerCase() !== "delete";
    });
    $("confirm-delete").addEventListener("close", onDeleteDialogClose);
    $("toggle-sidebar").addEventListener("click", function () {
      var open = document.body.classList.toggle("sidebar-open");
      $("toggle-sidebar").setAttribute("aria-expanded", String(open));
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { closeSidebar(); if (!$("memory").hidden) toggleMemory(false); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wire();
    var saved = localStorage.getItem(TOKEN_KEY);
    if (!saved) { signOut(); return; }
    signIn(saved).catch(function () { signOut("Sign in again."); });
  });
})();
