// Client-side search over every page of the site: the index (_static/search_index.js, built by tools/render_docs.py)
// is loaded on first use with a <script> tag, so it works from file:// too. Every query word must appear in a section.
(function () {
  var box = document.getElementById('site-search'), list = document.getElementById('site-search-results');
  if (!box || !list) return;
  var waiting = null;                       // callbacks waiting for the index while it loads
  function load(then) {
    if (window.MINIONEREC_SEARCH) return then();
    if (waiting) { waiting.push(then); return; }
    waiting = [then];
    var s = document.createElement('script'); s.src = '_static/search_index.js';
    s.onload = function () { var w = waiting; waiting = null; w.forEach(function (f) { f(); }); };
    document.head.appendChild(s);
  }
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text) e.textContent = text; return e; }
  function snippet(text, word) {
    var i = Math.max(0, text.toLowerCase().indexOf(word) - 60), s = text.slice(i, i + 160);
    return (i > 0 ? '…' : '') + s + (i + 160 < text.length ? '…' : '');
  }
  function run() {
    var q = box.value.trim().toLowerCase(); list.replaceChildren();
    if (q.length < 2) { list.hidden = true; return; }
    var idx = window.MINIONEREC_SEARCH, words = q.split(/\s+/), hits = [];
    // every word must appear in the section; a word in the section's heading counts most, then in the chapter's
    // title, then how often it occurs in the text (up to 5 times)
    idx.sections.forEach(function (s) {
      var t = s.t.toLowerCase(), x = s.x.toLowerCase(), pt = idx.pages[s.p].t.toLowerCase(), score = 0;
      for (var k = 0; k < words.length; k++) {
        var w = words[k], inT = t.indexOf(w) >= 0, n = x.split(w).length - 1;
        if (!inT && !n) return;
        score += (inT ? 10 : 0) + (pt.indexOf(w) >= 0 ? 6 : 0) + Math.min(n, 5);
      }
      hits.push([score, s]);
    });
    hits.sort(function (a, b) { return b[0] - a[0]; });
    list.hidden = false;
    if (!hits.length) { list.appendChild(el('li', 'search-none', 'no match for “' + box.value.trim() + '”')); return; }
    hits.slice(0, 15).forEach(function (h) {
      var s = h[1], page = idx.pages[s.p], li = el('li'), a = el('a');
      a.href = page.u + (s.a ? '#' + s.a : '');
      a.appendChild(el('span', 'search-page', page.t));
      a.appendChild(el('span', 'search-title', s.t));
      a.appendChild(el('span', 'search-snippet', snippet(s.x, words[0])));
      li.appendChild(a); list.appendChild(li);
    });
  }
  box.addEventListener('focus', function () { load(function () {}); });
  box.addEventListener('input', function () { load(run); });
  box.addEventListener('keydown', function (e) {
    if (e.key === 'Enter') { var a = list.querySelector('a'); if (a) window.location.href = a.href; }
    if (e.key === 'Escape') { box.value = ''; run(); }
  });
})();
