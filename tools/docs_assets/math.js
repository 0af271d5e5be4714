// Typeset $...$, $$...$$, \(...\) and \[...\] in the page's markdown with the vendored KaTeX (no network).
document.addEventListener('DOMContentLoaded', function () {
  if (!window.renderMathInElement) return;
  document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown, .jp-RenderedMarkdown').forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [{left: '$$', right: '$$', display: true}, {left: '\\[', right: '\\]', display: true},
                   {left: '$', right: '$', display: false}, {left: '\\(', right: '\\)', display: false}],
      throwOnError: false, ignoredTags: ['script', 'noscript', 'style', 'textarea', 'pre', 'code']
    });
  });
});
