/* Messages on colloquy's page: the bubbles of a conversation built from its stored log (a turn's
 * tool calls and thinking folded into its reply, turns replaced by an edit or a regeneration
 * kept in a collapsed "earlier version"), their actions (copy, edit, regenerate, what the model
 * saw), the token and cost lines, and the panel of what the model was sent for a reply.
 *
 * Every text from the server reaches the page through textContent or the sanitising renderer
 * (render.js), never through innerHTML. */
(function () {
  "use strict";

  var R = window.colloquyRender;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /* "1 message", "2 messages": the page's one plural rule (English: singular for exactly 1). */
  function count(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // -- tokens and dollars -----------------------------------------------------------------------

  function money(x) {
    if (x === null || x === undefined) return "price unknown";
    return "$" + Number(x).toFixed(x < 0.01 ? 6 : 4);
  }

  function totalTokens(u) {
    return (u.input_tokens || 0) + (u.output_tokens || 0) + (u.cache_read_tokens || 0) +
      (u.cache_write_tokens || 0);
  }

  /* One reply's usage line. A provider that reported no usage is never shown as "0 tokens ·
   * $0": colloquy's estimate is marked as one, and no figure at all says "unknown". A reply an
   * input guard gave instead of the model (``blocked``) made no model call: nothing to bill. */
  function usageLine(usage, cost, stopReason, blocked) {
    if (blocked) return "blocked by a guard · no model call";
    var stopped = stopReason === "cancelled" ? "stopped · " : "";
    if (!usage || !totalTokens(usage)) return stopped + "usage not reported · cost unknown";
    var est = usage.estimated ? "~" : "";
    var line = "in " + est + usage.input_tokens + " · out " + est + usage.output_tokens + " tokens";
    if (usage.cache_read_tokens || usage.cache_write_tokens) {
      line += " · cache read " + usage.cache_read_tokens + " · cache write " + usage.cache_write_tokens;
    }
    if (usage.estimated) line += " (estimated)";
    return stopped + line + " · " + (usage.estimated && cost !== null && cost !== undefined
      ? "~" + money(cost) : money(cost));
  }

  /* The conversation's total, from the replies' and side calls' usage (a guard's answer to a
   * blocked message made no model call: it adds nothing; the guard's judge is a side call). */
  function sessionLine(items) {
    var tokens = 0, cost = 0, unknownPrice = false, estimated = false, reported = 0, any = false;
    items.forEach(function (m) {
      if (m.role === "user" || m.blocked) return;
      any = true;
      if (!m.usage || !totalTokens(m.usage)) { unknownPrice = true; return; }
      reported++;
      tokens += totalTokens(m.usage);
      if (m.usage.estimated) estimated = true;
      if (m.cost_usd === null || m.cost_usd === undefined) unknownPrice = true; else cost += m.cost_usd;
    });
    if (!any) return "";
    if (!reported) return "This conversation: usage not reported";
    return "This conversation: " + (estimated ? "~" : "") + tokens + " tokens" +
      (estimated ? " (partly estimated)" : "") + " · " +
      (unknownPrice ? "price unknown" : (estimated ? "~" : "") + money(cost));
  }

  // -- copying ---------------------------------------------------------------------------------

  /* Copy ``text`` to the clipboard (the Clipboard API where the page is a secure context, else
   * the older selection-based command); says how it went on ``button``. */
  function copy(text, button) {
    function done(ok) {
      var label = button.dataset.label || button.textContent;
      button.dataset.label = label;
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    function fallback() {
      var area = el("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      area.remove();
      done(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
    } else {
      fallback();
    }
  }

  /* Copy buttons on the code blocks of a rendered piece. */
  function addCodeCopy(root) {
    Array.prototype.forEach.call(root.querySelectorAll("pre"), function (pre) {
      if (pre.querySelector(".copy-code")) return;
      var b = el("button", "small copy-code", "Copy");
      b.type = "button";
      b.setAttribute("aria-label", "Copy code");
      b.addEventListener("click", function () {
        var code = pre.querySelector("code");
        copy((code || pre).textContent, b);
      });
      pre.insertBefore(b, pre.firstChild);
    });
  }

  function renderInto(node, text) {
    return R.into(node, text, { onPiece: addCodeCopy });
  }

  // -- content blocks --------------------------------------------------------------------------

  function pretty(value) {
    if (typeof value === "string") return value;
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }

  function resultText(block) {
    if (typeof block.content === "string") return block.content;
    return (block.content || []).map(function (b) {
      return b.type === "text" ? b.text : "[" + b.type + "]";
    }).join("\n");
  }

  function argsSummary(input) {
    var keys = Object.keys(input || {});
    var parts = keys.slice(0, 3).map(function (k) {
      var v = input[k];
      v = typeof v === "string" ? JSON.stringify(v) : pretty(v);
      return k + ": " + (v.length > 40 ? v.slice(0, 39) + "…" : v);
    });
    return parts.join(", ") + (keys.length > 3 ? ", …" : "");
  }

  /* A server tool's result (web search, fetch, code execution, ...), as text: search hits as
   * "title — url" lines, code runs as their output, errors as their code; encrypted content
   * (sent back to the provider unchanged) is never shown. */
  function serverResultText(block) {
    var c = block.content;
    var items = Array.isArray(c) ? c : [c];
    return items.map(function (item) {
      if (!item || typeof item !== "object") return String(item === undefined ? "" : item);
      if (item.error_code) return "error: " + item.error_code;
      if (item.url) return (item.title ? item.title + " — " : "") + item.url;
      if ("stdout" in item || "stderr" in item) {
        return [item.stdout, item.stderr].filter(Boolean).join("\n") +
          (item.return_code ? "\n(exit " + item.return_code + ")" : "");
      }
      if (item.type === "text") return item.text;
      return pretty(withoutSecrets(item));
    }).join("\n");
  }

  function serverResultFailed(block) {
    var c = block.content;
    return !!(c && !Array.isArray(c) && typeof c === "object" &&
              (c.error_code || /_error$/.test(c.type || "")));
  }

  /* A copy of a block to show: base64 data and encrypted content replaced by "…". */
  function withoutSecrets(block) {
    var copy = Object.assign({}, block);
    if (copy.source && copy.source.data) copy.source = Object.assign({}, copy.source, { data: "…" });
    if (copy.encrypted_content) copy.encrypted_content = "…";
    if (copy.data && copy.type === "redacted_thinking") copy.data = "…";
    return copy;
  }

  /* A tool call (and its result, once known) as a compact expandable block; a server tool
   * (run by the provider: web search, code execution) is marked as one. */
  function toolBlock(use) {
    var server = use.type === "server_tool_use";
    var d = el("details", server ? "tool server" : "tool");
    var summary = el("summary");
    summary.appendChild(el("span", "tool-name", use.name));
    summary.appendChild(el("span", "tool-args", argsSummary(use.input)));
    var status = el("span", "tool-status", "no result");
    summary.appendChild(status);
    d.appendChild(summary);
    var io = el("div", "tool-io");
    io.appendChild(el("div", "label", "Input"));
    io.appendChild(el("pre", "tool-input", pretty(use.input || {})));
    d.appendChild(io);
    if (server) summary.insertBefore(el("span", "tool-kind", "server"), status);
    d._result = function (result) {
      var failed = server ? serverResultFailed(result) : !!result.is_error;
      status.textContent = failed ? "error" : "done";
      d.classList.toggle("failed", failed);
      io.appendChild(el("div", "label", failed ? "Error" : "Result"));
      io.appendChild(el("pre", "tool-result", server ? serverResultText(result) : resultText(result)));
    };
    return d;
  }

  /* Thinking, collapsed; its text rendered like a message once opened. */
  function thinkingBlock(text, redacted) {
    var d = el("details", "thinking");
    var summary = el("summary", null, redacted ? "Thinking (redacted by the provider)" : "Thinking");
    d.appendChild(summary);
    var body = el("div", "thinking-body");
    d.appendChild(body);
    d._text = text || "";
    d._set = function (t) {
      d._text = t;
      if (d.open) renderInto(body, t);
    };
    d.addEventListener("toggle", function () { if (d.open) renderInto(body, d._text); });
    return d;
  }

  /* The text a document or search result carries, when it carries text. */
  function carriedText(block) {
    var src = block.source || {};
    if (typeof src.data === "string" && src.type === "text") return src.data;
    var content = block.content || (src.type === "content" ? src.content : null);
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content.map(function (b) { return b.type === "text" ? b.text : "[" + b.type + "]"; }).join("\n");
    }
    return null;
  }

  /* Any other block (a document, a search result, a server tool's result without its call, a
   * block type colloquy does not know): one line, expandable. */
  function otherBlock(block) {
    var d = el("details", "tool other");
    var summary = el("summary");
    var name = { document: "document", search_result: "search result" }[block.type] ||
      block.name || block.type;
    summary.appendChild(el("span", "tool-name", name));
    var label = block.title || (block.type === "search_result" ? block.source : null) ||
      (block.source && block.source.media_type) || null;
    if (label) summary.appendChild(el("span", "tool-args", label));
    d.appendChild(summary);
    var text = carriedText(block);
    if (/_tool_result$/.test(block.type || "")) text = serverResultText(block);
    d.appendChild(el("pre", "tool-input", text !== null ? text : pretty(withoutSecrets(block))));
    return d;
  }

  /* The sources a reply's text cites (web search results, documents), once each, as one
   * collapsed block. */
  function citationsBlock(citations) {
    var seen = {};
    var items = [];
    citations.forEach(function (c) {
      var label = c.title || c.document_title || c.url || c.source || c.type;
      var key = (c.url || c.source || "") + "|" + label;
      if (seen[key]) return;
      seen[key] = true;
      items.push({ label: label, url: c.url || c.source || "" });
    });
    var d = el("details", "tool other citations");
    var summary = el("summary");
    summary.appendChild(el("span", "tool-name", "sources"));
    summary.appendChild(el("span", "tool-args", String(items.length)));
    d.appendChild(summary);
    var list = el("ul", "citation-list");
    items.forEach(function (it) {
      var li = el("li", null, it.label);
      if (it.url && it.url !== it.label) li.appendChild(el("span", "citation-url", " " + it.url));
      list.appendChild(li);
    });
    d.appendChild(list);
    return d;
  }

  // -- bubbles ---------------------------------------------------------------------------------

  function actionButton(label, cls, aria) {
    var b = el("button", "small " + cls, label);
    b.type = "button";
    if (aria) b.setAttribute("aria-label", aria);
    return b;
  }

  /* An empty bubble: {li, blocks, body, meta, actions, text}. */
  function bubble(role) {
    var li = el("li", "message " + role);
    li.appendChild(el("span", "who", role === "user" ? "You" : "Assistant"));
    var blocks = el("div", "blocks");
    var body = el("div", "body");
    var meta = el("div", "meta turn-meta");
    var actions = el("div", "message-actions");
    li.appendChild(blocks); li.appendChild(body); li.appendChild(meta); li.appendChild(actions);
    var b = { li: li, blocks: blocks, body: body, meta: meta, actions: actions, text: "",
              tools: {}, seqs: [], usage: null, cost: undefined };
    var copyButton = actionButton("Copy", "copy-message",
                                  role === "user" ? "Copy your message" : "Copy the reply");
    copyButton.addEventListener("click", function () { copy(b.text, copyButton); });
    actions.appendChild(copyButton);
    li._bubble = b;
    return b;
  }

  function setText(b, text) {
    b.text = text;
    return renderInto(b.body, text);
  }

  /* Fold one stored message into a bubble: text to the body, tool calls and thinking as blocks,
   * tool results onto their calls. */
  function absorb(b, m) {
    var texts = [];
    var citations = [];
    (m.content || []).forEach(function (block) {
      var type = block.type || "";
      if (type === "text") {
        texts.push(block.text);
        if (block.citations) citations = citations.concat(block.citations);
      } else if (type === "tool_use" || type === "server_tool_use") {
        var t = toolBlock(block);
        b.tools[block.id] = t;
        b.blocks.appendChild(t);
      } else if ((type === "tool_result" || /_tool_result$/.test(type)) &&
                 b.tools[block.tool_use_id]) {
        b.tools[block.tool_use_id]._result(block);
      } else if (type === "tool_result") {
        /* a result whose call is not in this bubble: nothing to hang it on */
      } else if (type === "thinking") b.blocks.appendChild(thinkingBlock(block.thinking));
      else if (type === "redacted_thinking") b.blocks.appendChild(thinkingBlock("", true));
      else b.blocks.appendChild(otherBlock(block));
    });
    if (citations.length) b.blocks.appendChild(citationsBlock(citations));
    b.seqs.push(m.seq);
    if (texts.length) b.text = b.text ? b.text + "\n\n" + texts.join("") : texts.join("");
    if (m.role === "assistant") {
      b.lastReply = m;
      if (m.usage) b.usage = addUsage(b.usage, m.usage);
      // Summed over the turn's model calls; unknown when any call's price is.
      var c = m.cost_usd === undefined ? null : m.cost_usd;
      b.cost = b.cost === undefined ? c : (b.cost === null || c === null ? null : b.cost + c);
    }
  }

  function addUsage(a, u) {
    if (!a) return Object.assign({}, u);
    return { input_tokens: a.input_tokens + u.input_tokens, output_tokens: a.output_tokens + u.output_tokens,
             cache_read_tokens: a.cache_read_tokens + u.cache_read_tokens,
             cache_write_tokens: a.cache_write_tokens + u.cache_write_tokens,
             estimated: !!(a.estimated || u.estimated) };
  }

  function startsTurn(m) {
    return m.role === "user" && (m.content || []).some(function (b) { return b.type !== "tool_result"; });
  }

  /* The bubbles of a stored log, in order: [{kind: "bubble", role, bubble, messages} |
   * {kind: "earlier", revision, items}] (replaced turns grouped where they were). */
  function view(messages) {
    var out = [], current = null, group = null;
    var revisionOf = {};
    messages.forEach(function (m) { if (m.revision) revisionOf[m.seq] = m.revision; });
    messages.forEach(function (m) {
      var target = out;
      if (m.superseded_by) {
        if (!group || group.by !== m.superseded_by) {
          group = { kind: "earlier", by: m.superseded_by, revision: revisionOf[m.superseded_by],
                    items: [] };
          out.push(group);
          current = null;
        }
        target = group.items;
      } else if (group) {
        group = null;
        current = null;
      }
      var toolResults = m.role === "user" && !startsTurn(m);
      if (m.role === "assistant" || toolResults) {
        if (!current || current.role !== "assistant") {
          current = { kind: "bubble", role: "assistant", bubble: bubble("assistant"), messages: [] };
          target.push(current);
        }
      } else {
        current = { kind: "bubble", role: "user", bubble: bubble("user"), messages: [] };
        target.push(current);
      }
      current.messages.push(m);
      absorb(current.bubble, m);
      if (m.blocked) current.bubble.li.classList.add("blocked");
    });
    return out;
  }

  /* Show a view's items in ``list`` (an <ol>); returns the live bubbles, oldest first. */
  function show(list, items) {
    var live = [];
    items.forEach(function (item) {
      if (item.kind === "earlier") {
        var li = el("li", "earlier");
        var d = el("details");
        var what = item.revision === "regenerate" ? "regenerated" : "edited";
        d.appendChild(el("summary", null, "Earlier version (" + what + ")"));
        var ol = el("ol", "messages nested");
        show(ol, item.items);
        d.appendChild(ol);
        li.appendChild(d);
        list.appendChild(li);
        return;
      }
      var b = item.bubble;
      if (item.role === "assistant") {
        var last = b.lastReply || {};
        b.meta.textContent = usageLine(b.usage, b.cost, last.stop_reason, last.blocked);
        b.replySeq = last.seq;
        b.hasContext = !!last.has_context;
      } else {
        b.userSeq = item.messages[0].seq;
        if (item.messages[0].revision) {
          b.meta.textContent = item.messages[0].revision === "edit" ? "edited" : "regenerated";
        }
      }
      setText(b, b.text);
      list.appendChild(b.li);
      if (!list.classList.contains("nested")) live.push(b);
    });
    return live;
  }

  // -- what the model saw ----------------------------------------------------------------------

  function section(title, count) {
    var s = el("section", "seen-part");
    var h = el("h3", null, title);
    if (count !== undefined) h.appendChild(el("span", "meta", " " + count));
    s.appendChild(h);
    return s;
  }

  function tokensLabel(n) { return "~" + count(n, "token"); }

  function seenMessages(list) {
    var ol = el("ol", "seen-messages");
    list.forEach(function (m) {
      var li = el("li", "seen-message " + m.role);
      li.appendChild(el("span", "who", "#" + m.seq + " " + (m.role === "user" ? "You" : "Assistant")));
      var text = m.text || (m.content || []).map(function (b) { return "[" + b.type + "]"; }).join(" ");
      li.appendChild(el("div", "seen-text", text));
      ol.appendChild(li);
    });
    return ol;
  }

  /* The panel's content for a SeenContext (GET .../messages/{seq}/context). */
  function seenPanel(seen) {
    var root = el("div", "seen");
    var sys = section("Persona (system prompt)", tokensLabel(seen.persona_tokens));
    sys.appendChild(el("p", "seen-text", seen.persona || "(none)"));
    if (!seen.persona_unchanged) {
      sys.appendChild(el("p", "meta", "The persona has changed since; this is today's."));
    }
    root.appendChild(sys);
    seen.parts.forEach(function (p) {
      var title = { facts: "Remembered facts", summary: "Summary of earlier messages",
                    recall: "Recalled excerpts" }[p.name] || p.name;
      var s = section(title, tokensLabel(p.tokens));
      if (p.facts.length) {
        var ul = el("ul", "seen-facts");
        p.facts.forEach(function (f) {
          ul.appendChild(el("li", f.held ? null : "meta", f.held
            ? (f.subject ? f.subject + ": " : "") + f.statement
            : "a fact forgotten since (its text is no longer held)"));
        });
        s.appendChild(ul);
      }
      if (p.summary) s.appendChild(el("p", "seen-text", p.summary));
      if (p.name === "summary" && p.seqs.length) {
        s.appendChild(el("p", "meta", "stands for messages #" + p.seqs[0] + "–#" + p.seqs[p.seqs.length - 1]));
      }
      if (p.messages.length) s.appendChild(seenMessages(p.messages));
      root.appendChild(s);
    });
    var msgs = section("Messages sent", count(seen.messages.length, "message") + ", " +
                       tokensLabel(seen.messages_tokens));
    var d = el("details");
    d.appendChild(el("summary", null, "Show the messages"));
    d.appendChild(seenMessages(seen.messages));
    msgs.appendChild(d);
    root.appendChild(msgs);
    root.appendChild(costTable(seen));
    return root;
  }

  function costTable(seen) {
    var s = section("Tokens and cost");
    var c = seen.cost;
    if (!c || !(c.input_tokens + c.output_tokens + c.cache_read_tokens + c.cache_write_tokens)) {
      s.appendChild(el("p", null, "The provider reported no usage for this reply; its cost is unknown."));
      return s;
    }
    var table = el("table", "cost-table");
    var head = el("tr");
    ["", "tokens", "cost"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    table.appendChild(head);
    var est = c.estimated ? "~" : "";
    [["Fresh input", c.input_tokens, c.input_usd], ["Cache write", c.cache_write_tokens, c.cache_write_usd],
     ["Cache read", c.cache_read_tokens, c.cache_read_usd], ["Output", c.output_tokens, c.output_usd]]
      .forEach(function (row) {
        var tr = el("tr");
        tr.appendChild(el("th", null, row[0]));
        tr.appendChild(el("td", null, est + row[1]));
        tr.appendChild(el("td", null, row[2] === null || row[2] === undefined ? "price unknown" : money(row[2])));
        table.appendChild(tr);
      });
    var total = el("tr", "total");
    total.appendChild(el("th", null, "Total"));
    total.appendChild(el("td", null, est + (c.input_tokens + c.cache_write_tokens + c.cache_read_tokens + c.output_tokens)));
    total.appendChild(el("td", null, money(c.total_usd)));
    table.appendChild(total);
    s.appendChild(table);
    s.appendChild(el("p", "meta", (c.estimated ? "The provider reported no usage: these counts are colloquy's estimate. " : "") +
      "Estimated input sent: ~" + seen.estimated_input_tokens + " tokens (persona, parts and messages above)."));
    return s;
  }

  window.colloquyMessages = {
    el: el, bubble: bubble, setText: setText, view: view, show: show, usageLine: usageLine,
    sessionLine: sessionLine, copy: copy, actionButton: actionButton, toolBlock: toolBlock,
    thinkingBlock: thinkingBlock, seenPanel: seenPanel, money: money, count: count
  };
})();
