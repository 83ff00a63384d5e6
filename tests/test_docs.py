"""The documentation site, as a reader sees it: build it offline (`scripts/docs.py`), serve it on localhost and
open every page in headless Chromium.

Checks: the build has no warnings (broken links smalldocs found, anything loaded from the network); every
notebook in nbs/ has its page, titled as the notebook, in the sidebar in file-name order; every public
exported symbol in vit_nb/_modidx.py has its API entry on its module's page; every <img> loads; no internal
link is broken (site links, links to the hosted docs, links to files in the repository); no console errors,
uncaught exceptions or network requests on any page; the maths renders; the search box finds an API entry. Screenshots of the home page and of a
notebook page go to artifacts/screenshots/ for people to look at.

Needs Chromium (`apt-get install chromium`), libjs-katex and the dev extra (playwright, smalldocs); scripts/setup
installs them. Missing ones fail the test under CI and skip it elsewhere, naming what to install.
"""
import functools, http.server, importlib.util, json, os, re, shutil, threading, time
from pathlib import Path
from urllib.parse import urljoin, urlsplit, unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / 'artifacts' / 'screenshots'
CHROMIUM = os.environ.get('VIT_NB_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync']
IGNORED_CONSOLE = re.compile(r'/favicon\.ico$')  # the browser's own probe for a site icon, not the page's


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _prerequisites():
    missing = []
    if not Path(CHROMIUM).exists(): missing.append('Chromium (`apt-get install chromium`)')
    for mod, what in (('playwright', 'playwright'), ('smalldocs', 'smalldocs')):
        if importlib.util.find_spec(mod) is None: missing.append(f"the {what} package (`pip install -e '.[dev]'`)")
    if not any(d and Path(d, 'katex.min.css').exists() for d in _load('docs').KATEX_DIRS):
        missing.append('KaTeX (`apt-get install libjs-katex`)')
    if missing:
        msg = 'the docs browser test needs ' + ', '.join(missing) + '; bash scripts/setup installs them'
        if os.environ.get('CI'): pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


# JavaScript run on each page once it has loaded
_INSPECT = """() => {
  const main = document.querySelector('main') || document.body;
  return {
    title: (document.querySelector('h1.title') || document.querySelector('h1') || {}).textContent || '',
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    headings: Object.fromEntries(Array.from(main.querySelectorAll('h2[id],h3[id],h4[id]')).map(h => [h.id, h.textContent.trim()])),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    sidebar: Array.from(document.querySelectorAll('#quarto-sidebar a[href]')).map(a => a.getAttribute('href')),
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    outputs: main.querySelectorAll('.cell-output').length,
    figures: Array.from(main.querySelectorAll('.cell-output img')).filter(i => i.complete && i.naturalWidth > 0).length,
    katex: document.querySelectorAll('.katex').length,
    katexErrors: Array.from(document.querySelectorAll('.katex-error')).map(e => e.textContent),
    rawMath: /\\\\\\(|\\\\\\[/.test(main.innerText),
  };
}"""


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site, serve it, and visit every page in Chromium; returns what each page showed."
    _prerequisites()
    from playwright.sync_api import sync_playwright
    t0 = time.time()
    out = tmp_path_factory.mktemp('site') / '_docs'
    docs = _load('docs')
    out, warnings, built = docs.build(out, verbose=False)
    t_build = time.time() - t0
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{srv.server_address[1]}/'
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.html'))
    report = dict(out=out, base=base, warnings=warnings, pages={}, built=built)
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp('chromium-profile')), executable_path=CHROMIUM, headless=True,
                args=FLAGS, viewport={'width': 1280, 'height': 900})
            try:
                for name in pages: report['pages'][name] = _visit(ctx, base, name)
                shutil.rmtree(SHOTS, ignore_errors=True); SHOTS.mkdir(parents=True)  # only this run's screenshots
                nb_pages = [html for _, html, _ in _notebooks() if html != 'index.html' and html in report['pages']]
                # the notebook page: the first, in the paper's order, that has a figure (else the first)
                nb_page = next((p for p in nb_pages if report['pages'][p]['images']), nb_pages[0] if nb_pages else None)
                report['shots'] = [_shoot(ctx, base, 'index.html')] + ([_shoot(ctx, base, nb_page)] if nb_page else [])
                report['search'] = _search(ctx, base, _symbols()[0]) if _symbols() else None
            finally: ctx.close()
    finally: srv.shutdown()
    report['t_build'], report['t_total'] = t_build, time.time() - t0
    print(f"\ndocs: built {len(pages)} pages in {t_build:.1f}s, browser checks done in {report['t_total']:.1f}s")
    return report


def _visit(ctx, base, name):
    "Open one page; return what it showed, with its console errors and any request that left localhost."
    page, errors = ctx.new_page(), []
    def route(r):
        if r.request.url.startswith(base): return r.continue_()
        errors.append(f'request to the network: {r.request.url}'); r.abort()
    page.route('**/*', route)
    page.on('console', lambda m: m.type == 'error' and not IGNORED_CONSOLE.search((m.location or {}).get('url', ''))
            and errors.append(f"console: {m.text} ({(m.location or {}).get('url', '')})"))
    page.on('pageerror', lambda e: errors.append(f'uncaught: {e}'))
    page.on('requestfailed', lambda r: r.url.startswith(base) and errors.append(f'failed to load {r.url}'))
    resp = page.goto(base + name, wait_until='load')
    page.wait_for_load_state('networkidle')
    info = page.evaluate(_INSPECT)
    info.update(status=resp.status if resp else None, errors=errors)
    page.close()
    return info


def _search(ctx, base, sym):
    "Type a symbol's name into the home page's search box; return the symbol and the links offered."
    page = ctx.new_page()
    page.goto(base + 'index.html', wait_until='networkidle')
    page.fill('#quarto-search input', sym[1])
    try: page.wait_for_selector('#quarto-search a[href*="#"]', timeout=5000)
    except Exception: pass  # reported by the test, with what was offered
    hrefs = page.eval_on_selector_all('#quarto-search a[href]', 'els => els.map(a => a.getAttribute("href"))')
    page.close()
    return (*sym, hrefs)


def _shoot(ctx, base, name):
    "Screenshot the top of a page, and the view around its first figure if it has one; return the first file."
    page = ctx.new_page()
    page.goto(base + name, wait_until='networkidle')
    dest = SHOTS / (Path(name).stem + '.png')
    page.screenshot(path=str(dest))
    img = page.query_selector('main img')
    if img:
        img.scroll_into_view_if_needed()
        page.evaluate('() => window.scrollBy(0, -200)')
        page.screenshot(path=str(SHOTS / (Path(name).stem + '-figure.png')))
    page.close()
    return dest


def _notebooks():
    "Every notebook nbdev documents: (path relative to nbs/, its page, its title)."
    from nbdev.config import get_config, nbpath2html
    from nbdev.doclinks import nbglob
    nbs = get_config(ROOT).nbs_path
    res = []
    for f in sorted(nbglob(nbs, func=Path), key=lambda p: (p.stem != 'index', p.relative_to(nbs).as_posix())):
        rel = f.relative_to(nbs)
        cells = json.loads(f.read_text())['cells']
        md = next((''.join(c['source']) for c in cells if c['cell_type'] == 'markdown'), '')
        m = re.match(r'\s*#\s+(.+)', md)
        res.append((rel.as_posix(), nbpath2html(rel).as_posix(), m[1].strip() if m else None))
    return res


def test_build_has_no_warnings(site):
    assert not site['warnings'], 'the offline docs build warned:\n' + '\n'.join(site['warnings'])


def test_every_notebook_has_its_page(site):
    assert site['pages'], 'the build wrote no pages'
    problems = []
    for nb, html, title in _notebooks():
        p = site['pages'].get(html)
        if p is None: problems.append(f'nbs/{nb}: no page {html}'); continue
        if p['status'] != 200: problems.append(f'{html}: HTTP {p["status"]}')
        if title and p['title'].strip() != title: problems.append(f'{html}: title {p["title"]!r}, notebook says {title!r}')
    assert not problems, '\n'.join(problems)


def test_sidebar_follows_the_notebooks(site):
    "The sidebar lists the home page, then every notebook in file-name order (the paper's order)."
    want = [html for _, html, _ in _notebooks()]
    for name, p in site['pages'].items():
        got = [urlsplit(h).path.lstrip('./') or 'index.html' for h in p['sidebar']]
        got = [g for g in got if g.endswith('.html')]
        assert got == want, f'{name}: sidebar links {got}, expected {want}'


def _symbols():
    "The public names nbdev exported, from vit_nb/_modidx.py: (qualified name, name, page, anchor)."
    spec = importlib.util.spec_from_file_location('_modidx', ROOT / 'vit_nb' / '_modidx.py')
    d = importlib.util.module_from_spec(spec); spec.loader.exec_module(d)
    res = []
    for mod, syms in d.d['syms'].items():
        for qual, (url, _) in syms.items():
            name = qual[len(mod) + 1:]
            if '.' in name or name.startswith('_'): continue  # methods are documented with their class; private names not at all
            page, _, anchor = url.partition('#')
            res.append((qual, name, page, anchor))
    return res


def test_every_exported_symbol_has_its_api_entry(site):
    "Each public name of each module in vit_nb/_modidx.py has a heading with its anchor on the module's page."
    syms, missing = _symbols(), []
    for qual, name, page, anchor in syms:
        p = site['pages'].get(page)
        if p is None: missing.append(f'{qual}: no page {page}'); continue
        head = p['headings'].get(anchor)
        if head is None or not head.endswith(name): missing.append(f'{qual}: no API entry #{anchor} on {page}')
    assert syms, 'vit_nb/_modidx.py lists no public symbols'
    assert not missing, f'{len(missing)} of {len(syms)} exported symbols have no API entry:\n' + '\n'.join(missing)


def test_search_finds_an_api_entry(site):
    "Typing an exported name into the search box offers its API entry."
    qual, name, page, anchor, hrefs = site['search']
    assert any(urlsplit(h).path.lstrip('./') == page and urlsplit(h).fragment == anchor for h in hrefs), \
        f'searching {name!r} on the home page offered {hrefs}, not {page}#{anchor}'


def test_every_page_shows_its_results(site):
    "Each notebook's page shows rendered outputs; a page whose notebook draws shows its figures, loaded."
    problems = []
    for nb, html, _ in _notebooks():
        p = site['pages'].get(html)
        if p is None: continue                                          # reported by test_every_notebook_has_its_page
        cells = json.loads((ROOT/"nbs"/nb).read_text())["cells"]
        n_out = sum(bool(c.get('outputs')) for c in cells if c['cell_type'] == 'code')
        n_png = sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', []))
        if n_out and not p['outputs']: problems.append(f"{html}: {n_out} cells with outputs in nbs/{nb}, none rendered")
        if n_png and p['figures'] < 1: problems.append(f"{html}: nbs/{nb} draws {n_png} figure(s), the page shows none")
        if not n_out: problems.append(f"nbs/{nb}: committed without any output")
    assert not problems, '\n'.join(problems)


def test_every_image_loads(site):
    bad = [f"{name}: {i['src'][:120]}" for name, p in site['pages'].items() for i in p['images'] if not i['ok']]
    assert not bad, 'images that did not load (naturalWidth 0):\n' + '\n'.join(bad)


def _check_link(site, name, href, cache):
    "None if the link works, else why not. Site links, hosted-doc links and repo links are checked; others are not."
    from nbdev.config import get_config
    cfg = get_config(ROOT)
    doc_url, blob = cfg.doc_url, f"{cfg.git_url.rstrip('/')}/blob/{cfg.branch}/"
    if href.startswith(doc_url): url = site['base'] + href[len(doc_url):]
    elif href.startswith(blob):
        path = unquote(urlsplit(href).path.split(f'/blob/{cfg.branch}/', 1)[1])
        return None if (ROOT / path).exists() else f'{href} (no {path} in the repository)'
    elif urlsplit(href).scheme or href.startswith('//'): return None  # elsewhere on the web: not checked offline
    else: url = urljoin(site['base'] + name, href)
    target, _, frag = url.partition('#')
    rel = unquote(urlsplit(target).path).lstrip('/') or 'index.html'
    if rel.endswith('/'): rel += 'index.html'
    if rel not in cache: cache[rel] = (site['out'] / rel).is_file()  # what the server would send
    if not cache[rel]: return f'{href} (no {rel} in the site)'
    if frag and rel in site['pages'] and unquote(frag) not in site['pages'][rel]['ids']:
        return f'{href} (no #{frag} on {rel})'


def test_no_internal_link_is_broken(site):
    cache, broken = {}, []
    for name, p in site['pages'].items():
        for href in sorted(set(p['links'])):
            if href.startswith(('mailto:', 'javascript:')) or href == '#': continue
            why = _check_link(site, name, href, cache)
            if why: broken.append(f'{name}: {why}')
    assert not broken, f'{len(broken)} broken link(s):\n' + '\n'.join(broken)


def test_no_console_errors(site):
    errs = [f'{name}: {e}' for name, p in site['pages'].items() for e in p['errors']]
    assert not errs, '\n'.join(errs)


def test_maths_renders(site):
    bad = [f"{name}: {p['katexErrors'] or 'TeX left unrendered'}" for name, p in site['pages'].items()
           if p['katexErrors'] or p['rawMath']]
    assert not bad, 'KaTeX did not render:\n' + '\n'.join(bad)
    assert any(p['katex'] for p in site['pages'].values()), "no page has rendered maths; the notebooks have the paper's equations"


def test_screenshots_saved(site):
    for f in site['shots']: assert f.exists() and f.stat().st_size > 10_000, f'{f} is missing or blank'
