"""Template injection: known sandbox-escape payloads are refused with a clear error and never run.

Each payload is written into a message's ``sms.txt`` (and, for the HTML checks, ``email.html``) of a
scratch templates folder, then rendered for a sample member. Several payloads try to create a
canary file through ``os``; the test checks the file never appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loyalty.programme import Programme
from loyalty.render_context import personas
from loyalty.rendering import SandboxViolation, TemplateError, TemplateMissing, TemplateSyntax, UndefinedVariable
from tests.template_helpers import scratch_library

CANARY = "/tmp/loyalflow-ssti-canary"

PAYLOADS: list[tuple[str, str, type[TemplateError]]] = [
    ("mro", "{{ ''.__class__.__mro__ }}", SandboxViolation),
    ("subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", SandboxViolation),
    ("cycler globals", "{{ cycler.__init__.__globals__.os.popen('touch " + CANARY + "').read() }}",
     SandboxViolation),
    ("template reference context", "{{ self._TemplateReference__context }}", SandboxViolation),
    ("lipsum globals", "{{ lipsum.__globals__['os'].system('touch " + CANARY + "') }}", UndefinedVariable),
    ("joiner globals", "{{ joiner.__init__.__globals__ }}", SandboxViolation),
    ("namespace globals", "{{ namespace.__init__.__globals__ }}", SandboxViolation),
    ("flask config", "{{ config.items() }}", UndefinedVariable),
    ("request globals", "{{ request.application.__globals__.__builtins__ }}", UndefinedVariable),
    ("member internals", "{{ member.__init__.__globals__ }}", SandboxViolation),
    ("member dict", "{% set d = member.__dict__ %}{{ d }}", TemplateError),
    ("attr filter", "{{ member|attr('__class__') }}", SandboxViolation),
    ("attr filter chain", "{{ (member|attr('__class__'))|attr('__base__') }}", TemplateError),
    ("library behind link()", "{{ link.__self__.web.secret_key }}", SandboxViolation),
    ("range of a billion", "{% for x in range(10**9) %}{% endfor %}", SandboxViolation),
    ("nested loops", "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                     "{% endfor %}{% endfor %}{% endfor %}", SandboxViolation),
    ("string multiplication", "{{ 'A' * 1000000000 }}", SandboxViolation),
    ("list multiplication", "{{ ([1] * 1000) * 1000 }}", SandboxViolation),
    ("power tower", "{{ 9 ** (9 ** 9) }}", SandboxViolation),
    ("percent formatting", "{{ '%999999999s' % member.first_name }}", SandboxViolation),
    ("str.format attribute walk", "{{ '{0.__class__.__mro__}'.format(member) }}", SandboxViolation),
    ("str.format width", "{{ '{:>999999999}'.format(1) }}", SandboxViolation),
    ("format_map", "{{ '{x}'.format_map({'x': member}) }}", SandboxViolation),
    ("format by item", "{{ 'x'['format']('{:>999999999}') }}", SandboxViolation),
    ("ljust width", "{{ member.first_name.ljust(999999999) }}", SandboxViolation),
    ("center filter", "{{ 'x'|center(999999999) }}", TemplateSyntax),
    ("format filter", "{{ '%s'|format(member) }}", TemplateSyntax),
    ("list mutation", "{% set l = [] %}{{ l.append(1) }}", SandboxViolation),
    ("dict mutation", "{% set d = {} %}{{ d.update(a=1) }}", SandboxViolation),
    ("infinite recursion", "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}", SandboxViolation),
    ("include outside the folder", "{% include '../config/programme.yaml' %}", TemplateMissing),
    ("include absolute path", "{% include '/etc/passwd' %}", TemplateMissing),
    ("output size", "{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}", SandboxViolation),
    ("globals via range", "{{ range.__globals__ }}", SandboxViolation),
    ("formatter internals", "{{ _fmt.__class__.__init__.__globals__ }}", SandboxViolation),
]


@pytest.mark.parametrize(("payload", "refused_as"), [(p, e) for _, p, e in PAYLOADS],
                         ids=[name for name, _, _ in PAYLOADS])
def test_payload_is_refused(tmp_path: Path, programme: Programme, payload: str,
                            refused_as: type[TemplateError]) -> None:
    library = scratch_library(tmp_path, programme, {"evil/sms.txt": payload})
    context = personas(programme, name="evil")["olivia"]
    with pytest.raises(refused_as) as caught:
        library.render("evil", "sms", context)
    assert caught.value.message
    assert "templates/evil/" in str(caught.value)  # the error names the file
    assert not Path(CANARY).exists()


def test_at_least_twenty_payloads() -> None:
    assert len(PAYLOADS) >= 20


def test_refusal_names_file_line_and_attribute(tmp_path: Path, programme: Programme) -> None:
    source = "Hello\n{{ member.first_name }}\n{{ ''.__class__ }}"
    library = scratch_library(tmp_path, programme, {"evil/sms.txt": source})
    with pytest.raises(SandboxViolation) as caught:
        library.render("evil", "sms", personas(programme, name="evil")["olivia"])
    assert caught.value.file == "templates/evil/sms.txt"
    assert caught.value.line == 3
    assert caught.value.variable == "__class__"


def test_timeout_stops_a_slow_render(tmp_path: Path, programme: Programme) -> None:
    from loyalty.rendering import RenderLimits

    slow = "{% for a in range(1000) %}{% for b in range(19) %}{{ member.first_name|upper|lower|title }}{% endfor %}" \
           "{% endfor %}"
    library = scratch_library(tmp_path, programme, {"slow/sms.txt": slow},
                              limits=RenderLimits(timeout_seconds=0.0001, max_output_chars=10**7))
    with pytest.raises(SandboxViolation, match="longer than"):
        library.render("slow", "sms", personas(programme, name="slow")["olivia"])



def test_time_limit_counts_the_threads_cpu_not_waiting() -> None:
    """A render waiting for a core on a busy machine is not refused; one computing past its budget is."""
    import time

    from loyalty.rendering_sandbox import RenderLimitExceeded, end_budget, open_budget

    budget, token = open_budget(0.05)
    try:
        time.sleep(0.15)  # off the CPU, as when the scheduler runs other work
        budget.check_time()
        spin_until = time.thread_time() + 0.1
        while time.thread_time() < spin_until:
            pass
        with pytest.raises(RenderLimitExceeded, match=r"longer than 0\.05 s"):
            budget.check_time()
    finally:
        end_budget(token)

# -- member-supplied data -------------------------------------------------------------------------------------------

def test_names_with_markup_are_escaped_in_html(programme: Programme) -> None:
    from tests.template_helpers import shipped_library

    library = shipped_library(programme)
    mallory = personas(programme, name="welcome")["mallory"]
    html = library.render("welcome", "email", mallory).content["html"]
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_crlf_in_names_cannot_inject_headers(tmp_path: Path, programme: Programme) -> None:
    library = scratch_library(tmp_path, programme, {
        "hdr/email.subject.txt": "Hi {{ member.first_name }} {{ member.last_name }}",
        "hdr/email.html": '<p>Hi</p><a href="{{ unsubscribe_url }}">unsubscribe</a>'})
    mallory = personas(programme, name="hdr")["mallory"]
    rendered = library.render("hdr", "email", mallory)
    subject = rendered.content["subject"]
    assert "\r" not in subject and "\n" not in subject
    assert "Bcc: victim@example.com" in subject  # harmless text on the one subject line
    assert all("\r" not in v and "\n" not in v for v in rendered.headers.values())


def test_member_fields_cannot_break_out_of_links(tmp_path: Path, programme: Programme) -> None:
    library = scratch_library(tmp_path, programme, {
        "lnk/email.subject.txt": "x",
        "lnk/email.html": '<a href="{{ link(\'offer\', code=member.first_name) }}">go</a>'
                          '<a href="{{ unsubscribe_url }}">u</a>'})
    html = library.render("lnk", "email", personas(programme, name="lnk")["mallory"]).content["html"]
    assert "/offers/%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in html
    assert "<script>" not in html
