// SID explorer: one plain-JS view for the docs, the sid stage's standalone HTML and JupyterLab (anywidget).
// render({model, el}): `model` is an anywidget model or the small static model below; its state is
//   data   : {name, levels, codebook_sizes, codes, titles, reps, stats, collisions, moved, extended} (minionerec.sid_explorer.explorer_data)
//   prefix : the chosen code prefix (list of ints)     item : the chosen item id, -1 for none     query : the search text
// The view never uses innerHTML with catalogue text (titles are set with textContent), and loads nothing from a network.
function sidExplorerRender({ model, el }) {
  const D = model.get('data'), L = D.levels.length, N = D.codes.length, PAGE = 100, MAXHITS = 20;
  const lower = D.titles.map(t => t.toLowerCase());
  const moved = new Set(D.moved || []), extended = new Set(D.extended || []);
  const tok = (l, c) => '<' + D.levels[l] + '_' + c + '>';
  const sid = i => D.codes[i].map((c, l) => tok(l, c)).join('');
  const key = p => p.join(',');
  // the prefix tree: key -> {items, kids: Map(code -> key)}
  const nodes = new Map([['', { items: [], kids: new Map() }]]);
  D.codes.forEach((codes, i) => {
    for (let d = 0; d <= codes.length; d++) {
      const k = key(codes.slice(0, d));
      if (!nodes.has(k)) nodes.set(k, { items: [], kids: new Map() });
      nodes.get(k).items.push(i);
      if (d < codes.length) nodes.get(k).kids.set(codes[d], key(codes.slice(0, d + 1)));
    }
  });
  const rep = k => { const n = nodes.get(k); return n.items.length === 1 ? n.items[0] : (D.reps[k] ?? n.items[0]); };
  const h = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };

  el.classList.add('sx'); el.replaceChildren();
  const head = h('div', 'sx-head');
  head.append(h('b', null, D.name || 'SID tree'), h('span', 'sx-dim', ` ${N.toLocaleString()} items, ${L} levels, codebooks ${D.codebook_sizes.join(' x ')}`));
  const search = h('input', 'sx-search'); search.type = 'search';
  search.placeholder = 'search: title words, item id, or a SID prefix like ' + tok(0, D.codes[0][0]);
  search.setAttribute('aria-label', 'search items');
  const hits = h('ul', 'sx-results'), crumbs = h('div', 'sx-crumbs'), cols = h('div', 'sx-cols'), card = h('div', 'sx-card');
  const tabs = h('div', 'sx-tabs'), tableBox = h('div', 'sx-table'), statsBox = h('div', 'sx-stats');
  const bItems = h('button', 'sx-tab sx-on', 'items under the prefix'), bStats = h('button', 'sx-tab', 'level statistics');
  tabs.append(bItems, bStats); statsBox.hidden = true;
  el.append(head, search, hits, crumbs, cols, card, tabs, tableBox, statsBox);
  let shown = PAGE;

  function state() { return { prefix: (model.get('prefix') || []).slice(0, L), item: model.get('item') ?? -1 }; }
  function commit(prefix, item) { model.set('prefix', prefix); model.set('item', item); model.save_changes(); shown = PAGE; draw(); }
  function choose(i) { commit(D.codes[i].slice(0, -1), i); }

  function matches(q) {
    q = q.trim().toLowerCase(); if (!q) return [];
    if (/^\d+$/.test(q)) {
      const id = +q, out = id < N ? [id] : [];
      for (let i = 0; i < N && out.length < MAXHITS; i++) if (i !== id && lower[i].includes(q)) out.push(i);
      return out;
    }
    if (q.startsWith('<')) {
      const p = [...q.matchAll(/<([a-z])_(\d+)>/g)].map(m => +m[2]), n = nodes.get(key(p));
      return n ? n.items.slice(0, MAXHITS) : [];
    }
    const words = q.split(/\s+/), out = [];
    for (let i = 0; i < N && out.length < MAXHITS; i++) if (words.every(w => lower[i].includes(w))) out.push(i);
    return out;
  }
  function drawHits() {
    const q = model.get('query') || '', m = matches(q); hits.replaceChildren();
    if (!q.trim()) return;
    if (!m.length) { hits.append(h('li', 'sx-dim', 'no item matches')); return; }
    for (const i of m) {
      const li = h('li'); li.dataset.item = i; li.tabIndex = 0;
      li.append(h('code', null, sid(i)), ' ', h('span', null, D.titles[i]), h('span', 'sx-dim', ' #' + i));
      li.onclick = () => choose(i); li.onkeydown = e => { if (e.key === 'Enter') choose(i); };
      hits.append(li);
    }
  }
  function drawCrumbs(prefix, item) {
    crumbs.replaceChildren();
    const path = item >= 0 ? D.codes[item] : prefix;
    const all = h('a', 'sx-crumb', 'all'); all.href = '#'; all.onclick = e => { e.preventDefault(); commit([], -1); };
    crumbs.append(all);
    path.forEach((c, d) => {
      const a = h('a', 'sx-crumb', tok(d, c)); a.href = '#';
      a.onclick = e => { e.preventDefault(); commit(path.slice(0, d + 1), -1); };
      crumbs.append(' › ', a);
    });
  }
  function drawCols(prefix, item) {
    cols.replaceChildren();
    const path = item >= 0 ? D.codes[item] : prefix;
    for (let d = 0; d <= prefix.length && d < L + 1; d++) {
      const parent = key(prefix.slice(0, d)), node = nodes.get(parent);
      if (!node || !node.kids.size) break;
      const col = h('div', 'sx-col'); col.dataset.level = d;
      const lvl = D.levels[d] ?? '?';
      col.append(h('div', 'sx-colhead', `level ${lvl}: ${node.kids.size} codes under ${d ? tok(d - 1, prefix[d - 1]) : 'all'}`));
      const kids = [...node.kids.entries()].sort((a, b) => nodes.get(b[1]).items.length - nodes.get(a[1]).items.length || a[0] - b[0]);
      for (const [c, k] of kids) {
        const n = nodes.get(k), row = h('div', 'sx-row'); row.dataset.code = c; row.tabIndex = 0;
        if (path[d] === c) row.classList.add('sx-on');
        const r = rep(k), leaf = !n.kids.size;
        row.title = `${n.items.length} item(s); e.g. ${D.titles[r]}`;
        row.append(h('code', null, tok(d, c)), h('span', 'sx-n', String(n.items.length)), h('span', 'sx-t', D.titles[r]));
        const go = () => leaf && n.items.length === 1 ? commit(prefix.slice(0, d), n.items[0]) : commit(prefix.slice(0, d).concat([c]), -1);
        row.onclick = go; row.onkeydown = e => { if (e.key === 'Enter') go(); };
        col.append(row);
      }
      cols.append(col);
      if (d >= prefix.length) break;
    }
    const on = cols.querySelectorAll('.sx-on'); if (on.length) on[on.length - 1].scrollIntoView({ block: 'nearest' });
  }
  function drawCard(item) {
    card.replaceChildren(); card.hidden = item < 0;
    if (item < 0) return;
    const codes = D.codes[item];
    card.append(h('div', 'sx-title', D.titles[item] || '(no title)'));
    const s = h('div'); s.append('item ', h('b', null, '#' + item), ' · SID ', h('code', 'sx-sid', sid(item))); card.append(s);
    const ul = h('ul', 'sx-levels');
    codes.forEach((c, d) => {
      const parent = nodes.get(key(codes.slice(0, d))), here = nodes.get(key(codes.slice(0, d + 1)));
      const sib = [...parent.kids.entries()].filter(([cc]) => cc !== c).sort((a, b) => nodes.get(b[1]).items.length - nodes.get(a[1]).items.length);
      const li = h('li');
      li.append(h('code', null, tok(d, c)), ` shared by ${here.items.length} item(s); ${sib.length} sibling code(s)` + (sib.length ? ': ' : ''));
      sib.slice(0, 4).forEach(([cc, k], j) => { li.append(j ? ', ' : '', h('code', null, tok(d, cc)), h('span', 'sx-dim', ' ' + D.titles[rep(k)])); });
      if (sib.length > 4) li.append(h('span', 'sx-dim', ` … +${sib.length - 4} more`));
      ul.append(li);
    });
    card.append(ul);
    if (moved.has(item)) card.append(h('div', 'sx-flag', 'its last code was moved by the collision-free builder (another item had its raw SID)'));
    if (extended.has(item)) card.append(h('div', 'sx-flag', 'it got an extra level: its prefix held more items than the last codebook has codes'));
  }
  function drawTable(prefix, item) {
    tableBox.replaceChildren();
    const ids = nodes.get(key(prefix)).items, t = h('table'), hd = h('tr');
    tableBox.append(h('div', 'sx-dim', `${ids.length.toLocaleString()} item(s) under ${prefix.length ? prefix.map((c, d) => tok(d, c)).join('') : 'the whole catalogue'}`));
    ['id', 'SID', 'title'].forEach(x => hd.append(h('th', null, x)));
    const body = h('tbody');
    for (const i of ids.slice(0, shown)) {
      const tr = h('tr'); tr.dataset.item = i; if (i === item) tr.classList.add('sx-on');
      tr.append(h('td', null, String(i)), h('td', null, sid(i)), h('td', null, D.titles[i]));
      tr.onclick = () => choose(i); body.append(tr);
    }
    t.append(h('thead'), body); t.tHead.append(hd); tableBox.append(t);
    if (ids.length > shown) { const more = h('button', 'sx-more', `show ${Math.min(PAGE, ids.length - shown)} more`); more.onclick = () => { shown += PAGE; drawTable(prefix, item); }; tableBox.append(more); }
  }
  function drawStats() {
    statsBox.replaceChildren();
    const t = h('table'), cols_ = Object.keys(D.stats[0] || {}), hd = h('tr');
    cols_.forEach(c => hd.append(h('th', null, c.replace(/_/g, ' '))));
    t.append(hd);
    for (const r of D.stats) { const tr = h('tr'); cols_.forEach(c => tr.append(h('td', null, String(r[c])))); t.append(tr); }
    statsBox.append(t);
    const c = D.collisions || {}, p = h('p');
    p.textContent = (c.colliding_items_before != null ? `${c.colliding_items_before} item(s) shared a raw SID with an earlier item; ` : '') +
      `the builder moved ${c.moved ?? 0} item(s) to a free last code and gave ${c.extended ?? 0} item(s) an extra level; ` +
      `${c.colliding_items_after ?? 0} collision(s) left.`;
    statsBox.append(p);
  }
  function draw() {
    const { prefix, item } = state();
    drawHits(); drawCrumbs(prefix, item); drawCols(prefix, item); drawCard(item); drawTable(prefix, item);
  }
  search.value = model.get('query') || '';
  search.oninput = () => { model.set('query', search.value); model.save_changes(); drawHits(); };
  search.onkeydown = e => { if (e.key === 'Enter') { const m = matches(search.value); if (m.length) choose(m[0]); } };
  bItems.onclick = () => { tableBox.hidden = false; statsBox.hidden = true; bItems.classList.add('sx-on'); bStats.classList.remove('sx-on'); };
  bStats.onclick = () => { tableBox.hidden = true; statsBox.hidden = false; bStats.classList.add('sx-on'); bItems.classList.remove('sx-on'); };
  for (const k of ['prefix', 'item', 'query']) model.on && model.on('change:' + k, () => { if (k === 'query') search.value = model.get('query'); shown = PAGE; draw(); });
  drawStats(); draw();
}

// a model for pages without a kernel: plain state, change callbacks, nothing saved anywhere
function sidExplorerStatic(el, state) {
  const cbs = {};
  const model = { get: k => state[k], set: (k, v) => { state[k] = v; }, save_changes: () => {},
                  on: (ev, cb) => { (cbs[ev] = cbs[ev] || []).push(cb); } };
  sidExplorerRender({ model, el });
  return model;
}
