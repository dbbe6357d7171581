"""The survey page: one-click scores from the email's 0-10 links, and the optional comment.

``GET /survey/{token}?score=N`` records the score at once (the click *is* the answer, so the
member who closes the tab has still answered) and thanks the member with a comment form;
without a score it shows the whole question. ``POST /survey/{token}`` saves score and comment.
Both are idempotent on the invitation (:func:`loyalty.surveys.record_response`): a second click
or a resubmitted form writes nothing new.

The token (:func:`loyalty.surveys.survey_token`) names the member and the invitation; a link to an
invitation that is not an outbox message to that member is refused like a forged one, and nothing
is written for any refused link. The comment form carries the same CSRF defences as the preference
page (an HMAC field bound to the token, and ``Sec-Fetch-Site``/``Origin``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from loyalty.surveys import (
    AUTOMATED,
    BY_FORM,
    BY_LINK,
    SurveyLink,
    invitation_of,
    read_survey_token,
    record_response,
    response_score,
)
from loyalty.tokens import ExpiredToken, InvalidToken
from loyalty.web.context import Ctx, WebContext
from loyalty.web.forms import OptionalField, cross_site, csrf_matches, form_csrf

router = APIRouter()
FORM = "survey-form"  # binds the hidden CSRF field to this form
SCORES = range(11)
_SCORE_TEXT = {str(n): n for n in SCORES}


def _read(ctx: WebContext, token: str) -> SurveyLink | HTMLResponse:
    """The link's member and invitation, or the page explaining why the link does not work."""
    try:
        link = read_survey_token(ctx.settings.web, token)
    except ExpiredToken:
        return ctx.message_page("This survey has closed",
                                "Links in our messages stop working after a while. Thank you all the same!",
                                status_code=410)
    except InvalidToken:
        return _invalid(ctx)
    with ctx.engine.connect() as connection:
        known = invitation_of(connection, link.invitation_key, link.member_id)
    return link if known else _invalid(ctx)


def _invalid(ctx: WebContext) -> HTMLResponse:
    return ctx.message_page("This link is not valid",
                            "The link may have been copied incompletely. Please use the link exactly as it "
                            "appears in the message.", status_code=400)


def _score(value: str | None) -> int | None:
    """A 0-10 score from a query or form value; None when absent or anything else."""
    return _SCORE_TEXT.get((value or "").strip())  # exact text: "²".isdigit() is true, int("²") fails


def _record(ctx: WebContext, link: SurveyLink, score: int, verbatim: str | None, channel: str) -> str:
    with ctx.engine.begin() as connection:
        return record_response(connection, invitation_key=link.invitation_key, member_id=link.member_id,
                               score=score, verbatim=verbatim, channel=channel)


def _form(ctx: WebContext, token: str, *, score: int | None, status_code: int = 200,
          confirm: bool = False) -> HTMLResponse:
    return ctx.page("survey.html", status_code=status_code, scores=list(SCORES), score=score, confirm=confirm,
                    csrf=form_csrf(ctx, FORM, token))


@router.get("/survey/{token}", response_class=HTMLResponse)
def survey_page(token: str, ctx: Ctx, score: str | None = None) -> HTMLResponse:
    """With ``?score=N`` (0-10): record it and say thanks, offering the comment box; else the question.

    When the invitation's links look fetched by a mail scanner, the click is not taken: the form asks the
    member to confirm the score they clicked (preselected), and the POST records it.
    """
    link = _read(ctx, token)
    if isinstance(link, HTMLResponse):
        return link
    chosen = _score(score)
    if chosen is None:
        with ctx.engine.connect() as connection:
            earlier = response_score(connection, link.invitation_key)
        return _form(ctx, token, score=earlier, status_code=200 if score is None else 400)
    if _record(ctx, link, chosen, None, BY_LINK) == AUTOMATED:
        return _form(ctx, token, score=chosen, confirm=True)
    return ctx.page("survey_done.html", score=chosen, csrf=form_csrf(ctx, FORM, token), commented=False)


@router.post("/survey/{token}", response_class=HTMLResponse)
def submit_survey(token: str, request: Request, ctx: Ctx, score: OptionalField = None,
                  verbatim: OptionalField = None, csrf: OptionalField = None) -> HTMLResponse:
    """Save the form: a score (required) and the member's comment (optional)."""
    link = _read(ctx, token)
    if isinstance(link, HTMLResponse):
        return link
    if cross_site(ctx, request) or not csrf_matches(ctx, FORM, token, csrf):
        return ctx.message_page("Your answer was not saved",
                                "This form was not submitted from our survey page. Please open the link "
                                "from your message again.", status_code=403)
    chosen = _score(score)
    if chosen is None:
        return _form(ctx, token, score=None, status_code=400)
    _record(ctx, link, chosen, verbatim, BY_FORM)
    return ctx.page("survey_done.html", score=chosen, csrf=form_csrf(ctx, FORM, token),
                    commented=bool((verbatim or "").strip()))
