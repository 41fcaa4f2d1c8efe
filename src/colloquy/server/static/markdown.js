/* A small, safe Markdown renderer for chat messages.
 *
 * Why it builds DOM nodes instead of an HTML string: model and user text is untrusted. Every
 * piece of text goes into the page through textContent (never innerHTML), and only a whitelist
 * of elements is ever created (p, br, strong, em, code, pre, ul, ol, li, blockquote, h3-h5, a).
 * Links are kept only for http(s) and mailto URLs, and open with rel="noopener noreferrer".
 * Anything else, <script> or <img onerror=...> included, shows up as the literal text it is.
 */
(function () {
  "use strict";

  // `code`, **strong**, *em*, [label](url). Underscores are left alone: in chat they are far
  // more often part of a name (snake_case, __init__) than emphasis.
  var INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+?\*\*)|(\*[^*\s][^*\n]*?\*)|(\[[^\]\n]+\]\([^)\s]+\))/;
  var SAFE_URL = /^(https?:\/\/|mailto:)[^\s"'<>`]+$/i;

  function el(tag, text) {
    var node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function inline(parent, text, depth) {
    depth = depth || 0;
    while (text.length) {
      var m = depth < 4 ? INLINE.exec(text) : null;
      if (!m) {
        parent.appendChild(document.createTextNode(text));
        return;
      }
      if (m.index > 0) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
      var token = m[0];
      if (m[1]) {
        parent.appendChild(el("code", token.slice(1, -1)));
      } else if (m[2]) {
        var strong = el("strong");
        inline(strong, token.slice(2, -2), depth + 1);
        parent.appendChild(strong);
      } else if (m[3]) {
        var em = el("em");
        inline(em, token.slice(1, -1), depth + 1);
        parent.appendChild(em);
      } else {
        var close = token.indexOf("](");
        var label = token.slice(1, close);
        var href = token.slice(close + 2, -1);
        if (SAFE_URL.test(href)) {
          var a = el("a", label);
          a.setAttribute("href", href);
          a.setAttribute("rel", "noopener noreferrer nofollow");
          a.setAttribute("target", "_blank");
          parent.appendChild(a);
        } else {
          parent.appendChild(document.createTextNode(token));
        }
      }
      text = text.slice(m.index + token.length);
    }
  }

  function render(source) {
    var root = document.createDocumentFragment();
    var lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    var para = null, list = null, listKind = null, quote = null;

    function endBlocks() { para = null; list = null; listKind = null; quote = null; }

    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      var fence = /^\s*```\s*([\w+-]*)\s*$/.exec(line);
      if (fence) {
        endBlocks();
        var body = [];
        for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i]);
        var pre = el("pre"), code = el("code", body.join("\n"));
        if (fence[1]) code.setAttribute("data-lang", fence[1]);
        pre.appendChild(code);
        root.appendChild(pre);
        continue;
      }
      if (!line.trim()) { endBlocks(); continue; }
      var heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (heading) {
        endBlocks();
        var h = el("h" + Math.min(5, heading[1].length + 2));
        inline(h, heading[2]);
        root.appendChild(h);
        continue;
      }
      var item = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/.exec(line);
      if (item) {
        var kind = item[1] ? "ul" : "ol";
        if (!list || listKind !== kind) {
          endBlocks();
          list = el(kind);
          listKind = kind;
          if (kind === "ol" && item[2] !== "1") list.setAttribute("start", String(parseInt(item[2], 10)));
          root.appendChild(list);
        }
        var li = el("li");
        inline(li, item[3]);
        list.appendChild(li);
        continue;
      }
      var q = /^\s*>\s?(.*)$/.exec(line);
      if (q) {
        if (!quote) { endBlocks(); quote = el("blockquote"); root.appendChild(quote); }
        else quote.appendChild(el("br"));
        inline(quote, q[1]);
        continue;
      }
      if (!para) { endBlocks(); para = el("p"); root.appendChild(para); }
      else para.appendChild(el("br"));
      inline(para, line);
    }
    return root;
  }

  window.colloquyMarkdown = { render: render };
})();
