/* Message rendering for colloquy's page: Markdown by marked (GitHub-flavoured: tables, nested
 * lists, strikethrough, task lists), its output sanitised by DOMPurify, code blocks highlighted
 * by highlight.js. The libraries are vendored in static/vendor/ (versions.json says which).
 *
 * Safety, in layers: raw HTML in a message is shown as text (never parsed as markup); marked's
 * output goes through DOMPurify, which drops javascript: and other unsafe URLs and every
 * event-handler attribute; the page's Content-Security-Policy (script-src 'self') would refuse
 * an inline script even if one got through. Images are shown as links: a message must not make
 * the browser fetch an address of the sender's choosing.
 *
 * Speed (bench/render.py): a long message is cut into pieces of about PIECE characters at block
 * boundaries (never inside a code fence) and rendered piece by piece, the first ones at once and
 * the rest in later tasks, so no message blocks the page for long, however large or hostile it
 * is: a parser's worst cases (runs of brackets or emphasis markers) grow with the square of a
 * piece, not of the message, and nesting deeper than MAX_DEPTH is shown as plain text rather than
 * recursed into. Pieces off screen skip layout (CSS content-visibility). While a reply streams,
 * only its last piece changes, so each update re-renders at most one piece. A code block is
 * highlighted only when it names a known language (auto-detection runs every grammar); a large
 * one is highlighted in a task of its own after it is shown.
 */
(function () {
  "use strict";

  var WHOLE = 2000;           // messages up to this many characters render in one piece
  var PIECE = 1000;           // the size pieces are cut at, in characters
  // A table header longer than this is not repeated in later pieces. Each piece then holds at
  // least PIECE - MAX_HEADER characters of its own, so repeated headers at most double the work.
  var MAX_HEADER = PIECE / 2;
  var MAX_DEPTH = 24;         // quote or list nesting beyond which a piece is shown as plain text
  var MAX_HIGHLIGHT = 20000;  // longest code block highlighted, in characters
  var LATER = 2000;           // code blocks longer than this are highlighted in their own task
  var BUDGET = 8;             // milliseconds of rendering per task before yielding
  var LANGUAGE = /^[A-Za-z0-9_+#.-]{1,40}$/;
  var FENCE = /^ {0,3}(`{3,}|~{3,})/;

  function escapeHtml(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function canHighlight(lang, text) {
    return !!(lang && window.hljs && window.hljs.getLanguage(lang) && text.length <= MAX_HIGHLIGHT);
  }

  function highlight(text, lang) {
    try { return window.hljs.highlight(text, { language: lang, ignoreIllegals: true }).value; }
    catch (e) { return null; }
  }

  var renderer = {
    // Raw HTML (a block or an inline tag) is text: people paste markup to talk about it.
    html: function (token) {
      var text = escapeHtml(token.text);
      return token.block ? "<p>" + text.replace(/\n+$/, "").replace(/\n/g, "<br>") + "</p>\n" : text;
    },
    image: function (token) {
      return '<a href="' + escapeHtml(token.href) + '">' +
        escapeHtml("image: " + (token.text || token.href)) + "</a>";
    },
    code: function (token) {
      var lang = (token.lang || "").trim().split(/\s+/)[0];
      if (!LANGUAGE.test(lang)) lang = "";
      var body = null, later = "";
      if (canHighlight(lang, token.text)) {
        if (token.text.length > LATER) later = ' data-highlight="' + escapeHtml(lang) + '"';
        else body = highlight(token.text, lang);
      }
      var cls = lang ? ' class="hljs language-' + escapeHtml(lang.toLowerCase()) + '"' : "";
      return "<pre><code" + cls + later + ">" + (body === null ? escapeHtml(token.text) : body) +
        "</code></pre>\n";
    }
  };

  var md = new window.marked.Marked({ gfm: true, breaks: true, async: false });
  md.use({ renderer: renderer });

  window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    if (node.tagName === "INPUT") {  // a task list's checkbox, shown, never a form field
      if (node.getAttribute("type") !== "checkbox") node.remove();
      else node.setAttribute("disabled", "");
    }
  });
  var PURIFY = {
    RETURN_DOM_FRAGMENT: true,
    ADD_ATTR: ["data-highlight"],
    FORBID_TAGS: ["style", "form", "button", "textarea", "select", "option", "img", "svg",
                  "math", "iframe", "object", "embed", "video", "audio", "source"],
    FORBID_ATTR: ["style", "id", "name"]
  };

  function plain(text) {
    var frag = document.createDocumentFragment();
    var p = document.createElement("p");
    p.className = "plain";
    p.textContent = text;
    frag.appendChild(p);
    return frag;
  }

  /* Too deeply nested to parse safely (marked recurses once per level): the block prefix of a
   * line outside code fences, which is where every nesting marked parses starts (CommonMark's
   * container blocks: block quotes and list items). Quote markers count one level each; list
   * markers of every kind ("-", "*", "+", and ordered "1." or "1)" with up to 9 digits) count as
   * the indentation their content takes, with spaces and tabs. */
  function tooDeep(lines) {
    var fence = null;
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i], m = FENCE.exec(line);
      if (fence) { if (m && m[1][0] === fence[0] && m[1].length >= fence.length) fence = null; continue; }
      if (m) { fence = m[1]; continue; }
      var quotes = 0, indent = 0;
      for (var j = 0; j < line.length; j++) {
        var c = line.charCodeAt(j);
        if (c === 62) quotes++;                 // ">"
        else if (c === 32) indent++;
        else if (c === 9) indent += 4;
        else if (c === 45 || c === 42 || c === 43) indent += 2;  // "-", "*", "+" list markers
        else if (c >= 48 && c <= 57) {          // an ordered list marker: digits, then "." or ")"
          var k = j;
          while (k < line.length && k - j < 9 && line.charCodeAt(k) >= 48 && line.charCodeAt(k) <= 57) k++;
          var after = line.charCodeAt(k);
          if (after !== 46 && after !== 41) break;
          indent += k - j + 1;
          j = k;
        }
        else break;
        if (quotes > MAX_DEPTH || indent > 4 * MAX_DEPTH) return true;
      }
    }
    return false;
  }

  /* One piece of Markdown as a sanitised DocumentFragment (plain text if it cannot be parsed). */
  function piece(text) {
    if (!text) return document.createDocumentFragment();
    if (tooDeep(text.split("\n"))) return plain(text);
    try { return window.DOMPurify.sanitize(md.parse(text), PURIFY); }
    catch (e) { return plain(text); }
  }

  // -- cutting a long message into pieces ------------------------------------------------------

  function isTableRow(line) { return line.indexOf("|") >= 0 && line.trim() !== ""; }
  function isDelimiterRow(line) { return /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/.test(line); }

  /* Cut ``text`` into pieces of about PIECE characters. Cuts fall, in order of preference, at a
   * blank line before an unindented line (a block boundary), between table rows (the next piece
   * repeats a header of up to MAX_HEADER characters), between lines, or inside an overlong line
   * at a space. A code fence is never cut. Linear in the text's length; appending text changes
   * only the last pieces. */
  function split(text) {
    if (text.length <= WHOLE) return [text];
    var lines = text.split("\n");
    var pieces = [], cur = [], size = 0, fence = null, header = null;
    function cut() {
      if (cur.length) pieces.push(cur.join("\n"));
      cur = header ? header.slice() : [];
      size = header ? header[0].length + header[1].length + 2 : 0;  // a piece's size counts its header
    }
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i], m = FENCE.exec(line);
      if (fence) {
        if (m && m[1][0] === fence[0] && m[1].length >= fence.length) fence = null;
      } else {
        if (header && !isTableRow(line)) header = null;
        if (size >= PIECE && line.trim() !== "" && !/^\s/.test(line)) {
          var blankBefore = i > 0 && lines[i - 1].trim() === "";
          if (blankBefore || header || size >= 2 * PIECE) cut();
        }
        if (m) fence = m[1];
        else if (!header && i + 1 < lines.length && isTableRow(line) && isDelimiterRow(lines[i + 1]) &&
                 line.length + lines[i + 1].length <= MAX_HEADER) {
          header = [line, lines[i + 1]];  // repeated atop each later piece of the table
        }
        while (line.length > 2 * PIECE) {  // an overlong line: cut it at a space, else anywhere
          var at = line.lastIndexOf(" ", PIECE);
          if (at < PIECE / 2) at = PIECE;
          var code = line.charCodeAt(at - 1);
          if (code >= 0xd800 && code <= 0xdbff) at -= 1;  // never between a surrogate pair
          cur.push(line.slice(0, at));
          size += at;
          line = line.slice(at);
          cut();
        }
      }
      cur.push(line);
      size += line.length + 1;
    }
    if (cur.length) pieces.push(cur.join("\n"));
    return pieces;
  }

  // -- rendering into a message body -----------------------------------------------------------

  var queue = [];
  var scheduled = false;
  var channel = new MessageChannel();
  channel.port1.onmessage = runQueue;

  function schedule() {
    if (!scheduled) { scheduled = true; channel.port2.postMessage(0); }
  }

  function runQueue() {
    scheduled = false;
    var start = performance.now();
    while (queue.length && performance.now() - start < BUDGET) {
      var job = queue.shift();
      job();
    }
    if (queue.length) schedule();
  }

  function highlightLater(root) {
    var blocks = root.querySelectorAll("code[data-highlight]");
    Array.prototype.forEach.call(blocks, function (code) {
      queue.push(function () {
        if (!code.isConnected) return;
        var html = highlight(code.textContent, code.getAttribute("data-highlight"));
        code.removeAttribute("data-highlight");
        if (html !== null) code.replaceChildren(window.DOMPurify.sanitize(html, PURIFY));
      });
    });
    if (blocks.length) schedule();
  }

  /* Show Markdown ``text`` in ``container``, replacing what it showed. Pieces that did not change
   * since the last call (a streaming reply grows at its end) are kept as they are. Returns a
   * Promise resolved once every piece is on the page. ``options.onPiece(node)`` is called for
   * each new piece (e.g. to add copy buttons to its code blocks). */
  function into(container, text, options) {
    var st = container._md;
    if (!st || st.container !== container) {
      st = container._md = { container: container, pieces: [], gen: 0 };
      container.textContent = "";
    }
    var gen = ++st.gen;
    var onPiece = (options && options.onPiece) || null;
    var sources = split(String(text || ""));
    var keep = 0;
    while (keep < sources.length && keep < st.pieces.length &&
           st.pieces[keep].src === sources[keep]) keep++;
    for (var k = keep; k < st.pieces.length; k++) st.pieces[k].node.remove();
    st.pieces.length = keep;
    var many = sources.length > 1;
    container.classList.toggle("pieces", many);
    return new Promise(function (resolve) {
      var next = keep;
      function renderNext() {
        var node = document.createElement("div");
        node.className = "md-piece";
        node.appendChild(piece(sources[next]));
        container.appendChild(node);
        st.pieces.push({ src: sources[next], node: node });
        highlightLater(node);
        if (onPiece) onPiece(node);
        next++;
      }
      function later() {
        if (st.gen !== gen) { resolve(false); return; }  // replaced by a newer call
        if (next < sources.length) renderNext();
        if (next < sources.length) queue.push(later);
        else resolve(true);
      }
      // The first pieces at once (what is on screen first), the rest in later tasks.
      var start = performance.now();
      do { if (next < sources.length) renderNext(); }
      while (next < sources.length && performance.now() - start < BUDGET);
      if (next < sources.length) { queue.push(later); schedule(); }
      else resolve(true);
    });
  }

  /* The Markdown ``text`` as one sanitised DocumentFragment, synchronously (short texts). */
  function markdown(text) {
    var frag = document.createDocumentFragment();
    split(String(text || "")).forEach(function (src) { frag.appendChild(piece(src)); });
    return frag;
  }

  window.colloquyRender = { into: into, markdown: markdown, plain: plain, split: split,
                            escapeHtml: escapeHtml };
})();
