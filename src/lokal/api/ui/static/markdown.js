// A small, safe markdown renderer for model output.
//
// It never parses HTML: the text is split into blocks and inline spans, and every
// piece becomes a DOM node made with createElement/textContent, so `<script>` or
// `<img onerror>` in a model's answer is shown as the characters it is. Subset:
// fenced code blocks, inline code, headings, bold, italics, lists, block quotes,
// and links whose target is http(s) only (opened with rel="noopener noreferrer").

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBER = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<![\w*])\*(?=[^\s*])([^*]*?[^\s*])\*(?![\w*])|(?<!\w)_(?=[^\s_])([^_]*?[^\s_])_(?!\w)|\[([^\]\n]+)\]\(([^()\s]+)\)/g;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

export function safeHref(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// Inline spans of one line or paragraph into parent.
export function renderInline(text, parent) {
  let last = 0;
  INLINE.lastIndex = 0;
  for (let m = INLINE.exec(text); m; m = INLINE.exec(text)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    last = INLINE.lastIndex;
    if (m[1] !== undefined) {
      const code = el("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(code);
    } else if (m[3] !== undefined) {
      const strong = el("strong");
      renderInline(m[3], strong);
      parent.append(strong);
    } else if (m[4] !== undefined || m[5] !== undefined) {
      const em = el("em");
      renderInline(m[4] ?? m[5], em);
      parent.append(em);
    } else {
      const href = safeHref(m[7]);
      if (href) {
        const a = el("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        renderInline(m[6], a);
        parent.append(a);
      } else {
        parent.append(document.createTextNode(m[0]));
      }
    }
    INLINE.lastIndex = last;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function paragraph(lines, parent) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    renderInline(line, p);
  });
  parent.append(p);
}

// The whole text as block nodes, replacing what target held.
export function renderMarkdown(text, target) {
  const out = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) paragraph(para, out);
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const body = [];
      i++;
      while (i < lines.length && !(lines[i].trim().startsWith(fence[1]) && lines[i].trim().replaceAll(fence[1][0], "") === "")) {
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence (or the end of a still-streaming answer)
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) {
        code.dataset.lang = fence[2];
        pre.dataset.lang = fence[2];
      }
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      flush();
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);
      renderInline(heading[2], h);
      out.append(h);
      i++;
      continue;
    }
    if (BULLET.test(line) || NUMBER.test(line)) {
      flush();
      const ordered = !BULLET.test(line);
      const list = el(ordered ? "ol" : "ul");
      const first = NUMBER.exec(line);
      if (ordered && first && first[1] !== "1") list.start = Number(first[1]);
      const pattern = ordered ? NUMBER : BULLET;
      while (i < lines.length && pattern.test(lines[i])) {
        const m = pattern.exec(lines[i]);
        const li = el("li");
        renderInline(ordered ? m[2] : m[1], li);
        list.append(li);
        i++;
      }
      out.append(list);
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const quote = el("blockquote");
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      paragraph(body, quote);
      out.append(quote);
      continue;
    }
    if (!line.trim()) {
      flush();
    } else {
      para.push(line);
    }
    i++;
  }
  flush();
  target.replaceChildren(out);
  return target;
}
