"""Build the documentation site offline: nbdev's processed notebooks, rendered as a Quarto website by smalldocs.

    ./scripts/docs                  # build into _docs/ (nbdev's doc_path, where `nbdev-docs` also writes)
    ./scripts/docs --out DIR        # build somewhere else
    ./scripts/docs --serve [PORT]   # then serve it on http://127.0.0.1:PORT/ (default 8000) until Ctrl-C

With Quarto installed, `nbdev-docs` builds the same site; Quarto cannot be installed everywhere (its PyPI
package downloads the binary at build time), so this keeps nbdev's half of `nbdev-docs` and swaps Quarto
for smalldocs, a pure-Python renderer of Quarto websites:

1. nbdev: `nbs/nbdev.yml` from pyproject.toml and `nbs/sidebar.yml` from the notebooks (file-name order,
   so the paper's order), then every notebook in nbs/ through nbdev's processors into `_proc/`
   (what `nbdev-proc-nbs` does, without its step that installs Quarto);
2. smalldocs renders `_proc/` with `nbs/_quarto.yml`, honouring nbdev's `output-file` names
   (`00_patches.ipynb` -> `patches.html`, as Quarto does, so nbdev's doc links resolve);
3. the offline site loads nothing from the network: KaTeX comes from Debian's libjs-katex instead of a
   CDN, and the theme's web-font @import is dropped (the browser falls back to system fonts).
"""
import argparse, functools, http.server, os, re, shutil, sys
from pathlib import Path, PurePosixPath

KATEX_DIRS = [os.environ.get('VIT_NB_KATEX_DIR', ''), '/usr/share/javascript/katex']
# smalldocs warns about the parts of nbdev's standard _quarto.yml that it does not build (Markdown copies of
# the pages); they do not change the HTML site, so they are not shown
EXPECTED = re.compile(r'unknown key format-links|format commonmark is not built|keep-md is ignored|'
                      r'output-file is not read|shown but not run; smalldocs runs no code')


def process(n_workers=2):
    "Write nbdev.yml and sidebar.yml, and process every notebook into _proc/ with nbdev; return _proc."
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.serve import proc_nbs
    cfg = get_config()
    os.chdir(cfg.config_path)  # nbdev's processors call get_config() from the project root
    refresh_quarto_yml()
    nbdev_sidebar.__wrapped__(path=str(cfg.nbs_path))
    try: return proc_nbs(str(cfg.nbs_path), n_workers=n_workers)
    except Exception as e:
        raise RuntimeError(f'nbdev could not process a notebook for the docs: {e}\n'
                           'The docs build runs only the import, export and show_doc cells of each notebook; a cell that '
                           'mixes imports with other code is run whole, without the cells before it. Keep imports in '
                           'cells of their own.') from None


def render(proc, out):
    "Render the processed notebooks in `proc` into `out` with smalldocs; return the smalldocs Site."
    from smalldocs.config import load
    from smalldocs.site import Site

    class NbdevSite(Site):
        "A smalldocs site that writes each page where nbdev's front matter says (`output-file`), as Quarto does."
        def read(self, src):
            page = super().read(src)
            of = page.front.get('output-file')
            if of: page.out = PurePosixPath(src).parent / str(of)
            return page

    project = load(proc)
    project.project['output-dir'] = str(Path(out).absolute())
    site = NbdevSite(project, quiet=True)
    site.build()
    return site


def _katex_src():
    for d in KATEX_DIRS:
        if d and (Path(d) / 'katex.min.css').exists(): return Path(d)


def offline(out):
    "Make the built site load nothing from the network: vendor KaTeX, drop web-font imports. Return problems found."
    out, problems = Path(out), []
    for css in (out / 'site_libs').rglob('*.css'):
        text = css.read_text()
        new = re.sub(r'@import\s+url\(\s*["\']?https?://[^)]*\)\s*;?', '', text)
        if new != text: css.write_text(new)
    pages = sorted(out.rglob('*.html'))
    cdn = re.compile(r'https://cdn\.jsdelivr\.net/npm/katex@[\d.]+/dist')
    if any(cdn.search(p.read_text()) for p in pages):
        src = _katex_src()
        if src is None:
            problems.append('the pages use KaTeX but libjs-katex is not installed: `apt-get install libjs-katex` '
                            '(scripts/setup does it), or set VIT_NB_KATEX_DIR to a KaTeX dist folder')
        else:
            dst = out / 'site_libs' / 'katex'
            (dst / 'contrib').mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / 'katex.min.css', dst / 'katex.min.css')
            shutil.copyfile(src / 'katex.min.js', dst / 'katex.min.js')
            ar = src / 'contrib' / 'auto-render.min.js'
            shutil.copyfile(ar if ar.exists() else src / 'contrib' / 'auto-render.js', dst / 'contrib' / 'auto-render.min.js')
            fonts = dst / 'fonts'; fonts.mkdir(exist_ok=True)
            for f in (src / 'fonts').glob('*.woff2'): shutil.copyfile(f, fonts / f.name)
            for p in pages:
                up = '../' * (len(p.relative_to(out).parts) - 1)
                text = p.read_text()
                new = cdn.sub(f'{up}site_libs/katex', text)
                if new != text: p.write_text(new)
    for p in pages:  # anything else the pages would fetch from the network
        for url in re.findall(r'<(?:script|link|img)\b[^>]*?\s(?:src|href)="(https?://[^"]+)"', p.read_text()):
            problems.append(f'{p.relative_to(out)} loads {url} from the network')
    return problems


def build(out=None, n_workers=2, verbose=True):
    "Process and render the whole site; return (output folder, list of warnings). Raises on broken links."
    from nbdev.config import get_config
    cfg = get_config()
    out = Path(out or cfg.doc_path).absolute()
    cwd = os.getcwd()
    try:
        proc = process(n_workers)
        site = render(proc, out)
    finally: os.chdir(cwd)
    warnings = [w for w in site.warnings if not EXPECTED.search(w)]
    warnings += offline(out)
    if verbose:
        for w in warnings: print(f'docs: warning: {w}', file=sys.stderr)
        print(f'docs: wrote {len(site.pages)} page(s) to {os.path.relpath(out)}')
    return out, warnings, site


def serve(root, port=8000):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(('127.0.0.1', port), handler) as srv:
        print(f'docs: serving {root} on http://127.0.0.1:{port}/ (Ctrl-C stops)')
        try: srv.serve_forever()
        except KeyboardInterrupt: pass


def main(argv=None):
    ap = argparse.ArgumentParser(description='Build the documentation site offline (nbdev + smalldocs).')
    ap.add_argument('--out', help='output folder (default: _docs/)')
    ap.add_argument('--workers', type=int, default=2, help='processes for nbdev\'s notebook processing')
    ap.add_argument('--strict', action='store_true', help='exit 1 on any warning')
    ap.add_argument('--serve', nargs='?', const=8000, type=int, metavar='PORT', help='serve the site afterwards')
    args = ap.parse_args(argv)
    try: out, warnings, site = build(args.out, args.workers)
    except RuntimeError as e: sys.exit(f'docs: {e}')
    if args.strict and warnings: sys.exit(f'docs: {len(warnings)} warning(s), and --strict was given')
    if args.serve: serve(out, args.serve)


if __name__ == '__main__': main()
