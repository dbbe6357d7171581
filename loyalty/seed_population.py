"""Who the synthetic members are and how they behave (used by :mod:`loyalty.seed`).

Everything is drawn with numpy, one array per attribute over the whole population, so a
member's attributes depend only on the seed and their position, never on chunk sizes. Text
columns (names, e-mails, phones) are only formatted when a chunk of rows is written.

Behaviour is latent, as in real data: a gamma-lognormal *purchase rate* (heavy-tailed
frequency), a lognormal *basket* correlated with it (heavy-tailed spend), a Dirichlet
*category preference*, a *churn* time after which the member stops buying, and a
propensity to redeem points.
"""

from __future__ import annotations

import base64
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from channels.sandbox import sandbox_browser_keys
from loyalty.seed_io import US_PER_DAY, US_PER_SECOND, BulkWriter

YEAR_DAYS = 365.25
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")  # reserved (RFC 2606): nothing real is mailed
CHANNELS = ("store", "online", "app")


@dataclass(frozen=True)
class Zone:
    """Where a member lives: locale, IANA zone, standard UTC offset, and phone prefixes."""

    locale: str
    time_zone: str
    share: float
    utc_offset_hours: int
    prefixes: tuple[int, ...]  # NANP area codes, or French mobile prefixes (6x / 7x)


ZONES = (
    Zone("en_CA", "America/Toronto", 0.40 * 0.45, -5, (416, 647, 437, 905, 613)),
    Zone("en_CA", "America/Vancouver", 0.40 * 0.20, -8, (604, 778, 236, 250)),
    Zone("en_CA", "America/Edmonton", 0.40 * 0.17, -7, (780, 587, 403, 825)),
    Zone("en_CA", "America/Winnipeg", 0.40 * 0.08, -6, (204, 431)),
    Zone("en_CA", "America/Halifax", 0.40 * 0.10, -4, (902, 782)),
    Zone("fr_CA", "America/Toronto", 0.35, -5, (514, 438, 450, 418, 819, 581)),  # Montréal's zone is Toronto's
    Zone("en_US", "America/New_York", 0.15 * 0.40, -5, (212, 646, 718, 617)),
    Zone("en_US", "America/Chicago", 0.15 * 0.25, -6, (312, 773, 872)),
    Zone("en_US", "America/Denver", 0.15 * 0.10, -7, (303, 720)),
    Zone("en_US", "America/Los_Angeles", 0.15 * 0.25, -8, (213, 310, 323, 415)),
    Zone("fr_FR", "Europe/Paris", 0.10, 1, (60, 61, 62, 64, 65, 66, 67, 68, 73, 74, 75, 76, 77, 78)),
)

_FIRST = {
    "fr": ("Marie", "Camille", "Chloé", "Léa", "Émilie", "Sophie", "Catherine", "Geneviève", "Nathalie",
           "Isabelle", "Amélie", "Zoé", "Noémie", "Mathieu", "Félix", "Gabriel", "Olivier", "Étienne",
           "Julien", "Louis", "Antoine", "Benoît", "François", "Jérôme"),
    "en": ("Emma", "Olivia", "Ava", "Sophia", "Charlotte", "Amelia", "Emily", "Hannah", "Sarah", "Jessica",
           "Grace", "Chloe", "Liam", "Noah", "William", "James", "Benjamin", "Lucas", "Ethan", "Jacob",
           "Michael", "Daniel", "Ryan", "Matthew"),
}
_LAST = {
    "fr_CA": ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin",
              "Gagné", "Ouellet", "Pelletier", "Bélanger", "Lévesque", "Bergeron", "Leblanc", "Paquette",
              "Girard", "Simard", "Boucher", "Caron", "Beaulieu", "Cloutier", "Dubé"),
    "en_CA": ("Smith", "Brown", "Wilson", "MacDonald", "Campbell", "Taylor", "Anderson", "Thompson",
              "Martin", "Stewart", "Johnston", "Murray", "Clark", "Lee", "Walker", "Young", "Scott",
              "Robinson", "Mitchell", "Ross", "Patel", "Singh", "Wong", "Nguyen"),
    "en_US": ("Johnson", "Williams", "Jones", "Miller", "Davis", "Garcia", "Rodriguez", "Martinez",
              "Hernandez", "Lopez", "Gonzalez", "Moore", "Jackson", "White", "Harris", "Lewis", "Hall",
              "Allen", "King", "Wright", "Green", "Baker", "Adams", "Nelson"),
    "fr_FR": ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
              "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
              "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier"),
}
NAMES_PER_LIST = 24
assert all(len(names) == NAMES_PER_LIST for names in (*_FIRST.values(), *_LAST.values()))

#: Dirichlet weights of category preferences; categories not listed get 0.5.
CATEGORY_ALPHA = {"grocery": 3.0, "pharmacy": 1.2, "beauty": 0.8, "home": 0.8, "electronics": 0.3, "apparel": 0.7}
#: Basket size of a category relative to the member's typical basket.
CATEGORY_BASKET = {"grocery": 1.0, "pharmacy": 0.6, "beauty": 0.7, "home": 1.3, "electronics": 3.0, "apparel": 1.4}
#: How each locale shops (store, online, app): members abroad shop online.
CHANNEL_MIX = {"en_CA": (0.65, 0.2, 0.15), "fr_CA": (0.65, 0.2, 0.15), "en_US": (0.1, 0.6, 0.3),
               "fr_FR": (0.05, 0.65, 0.3)}

# Behaviour, tuned so the tiers come out near 60 / 25 / 11 / 4 % (see tests/test_seed.py).
MEAN_RATE = 0.85  # purchases per 30.44 days while active
BASKET_MEDIAN_CENTS = 10_500
BASKET_SIGMA = 0.7
SPEND_FREQUENCY_CORRELATION = 0.8
CHURN_MEAN_YEARS = 6.0
MAX_TENURE_YEARS = 4.0


def stream(seed: int, name: int) -> np.random.Generator:
    """An independent generator per purpose, so adding draws to one never shifts another."""
    return np.random.default_rng([seed, name])


@dataclass
class Population:
    """Attributes and latent behaviour of every member, one array entry per member."""

    size: int
    zone: np.ndarray  # index into ZONES
    first: np.ndarray  # index into the locale's first-name list
    last: np.ndarray
    email_style: np.ndarray
    email_domain: np.ndarray
    has_email: np.ndarray
    phone: np.ndarray  # the digits after '+', as int64; 0 when missing
    birthday_day: np.ndarray  # days since the epoch
    joined_us: np.ndarray
    churn_us: np.ndarray  # the member buys nothing after this instant
    rate: np.ndarray  # purchases per 30.44 active days
    basket: np.ndarray  # typical basket, cents
    preference: np.ndarray  # (members, categories) purchase shares
    redeem_propensity: np.ndarray  # monthly chance of redeeming when they can

    @property
    def locale(self) -> np.ndarray:
        """Locale index into :data:`LOCALES` for each member."""
        return _ZONE_LOCALE[self.zone]

    @property
    def utc_offset_us(self) -> np.ndarray:
        """Standard UTC offset of each member's zone, in microseconds."""
        return _ZONE_OFFSET[self.zone] * 3_600 * US_PER_SECOND


LOCALES = tuple(dict.fromkeys(z.locale for z in ZONES))
_ZONE_LOCALE = np.array([LOCALES.index(z.locale) for z in ZONES])
_ZONE_OFFSET = np.array([z.utc_offset_hours for z in ZONES], dtype=np.int64)


def build_population(size: int, seed: int, as_of_us: int, categories: list[str]) -> Population:
    """Draw ``size`` members as of ``as_of_us`` (deterministic for ``seed``)."""
    rng = stream(seed, 1)
    zone = rng.choice(len(ZONES), size=size, p=_normalised([z.share for z in ZONES]))
    tenure_days = 1 + (MAX_TENURE_YEARS * YEAR_DAYS - 1) * rng.random(size)  # joined evenly over four years
    joined_us = as_of_us - (tenure_days * 86_400).astype(np.int64) * US_PER_SECOND
    age_days = (18 + 67 * rng.beta(2.0, 2.6, size)) * YEAR_DAYS
    engagement = rng.standard_normal(size)
    rate = MEAN_RATE * np.exp(0.55 * engagement - 0.55**2 / 2) * rng.gamma(3.0, 1 / 3.0, size)
    rho = SPEND_FREQUENCY_CORRELATION
    basket = BASKET_MEDIAN_CENTS * np.exp(
        BASKET_SIGMA * (rho * engagement + np.sqrt(1 - rho**2) * rng.standard_normal(size)))
    churn_years = rng.exponential(CHURN_MEAN_YEARS * np.exp(0.5 * engagement))
    alpha = np.array([CATEGORY_ALPHA.get(c, 0.5) for c in categories])
    return Population(
        size=size, zone=zone,
        first=rng.integers(0, NAMES_PER_LIST, size), last=rng.integers(0, NAMES_PER_LIST, size),
        email_style=rng.integers(0, 3, size), email_domain=rng.integers(0, len(EMAIL_DOMAINS), size),
        has_email=rng.random(size) >= 0.05,
        phone=_phones(rng, zone, present=rng.random(size) >= 0.30),
        birthday_day=as_of_us // US_PER_DAY - age_days.astype(np.int64),
        joined_us=joined_us,
        churn_us=joined_us + (churn_years * YEAR_DAYS * 86_400).astype(np.int64) * US_PER_SECOND,
        rate=rate, basket=basket, preference=rng.dirichlet(alpha, size),
        redeem_propensity=rng.beta(1.2, 4.0, size),
    )


def _normalised(weights: list[float]) -> np.ndarray:
    array = np.asarray(weights, dtype=float)
    return array / array.sum()


#: NANP exchanges: 200-999 without N11 service codes or the fictional 555.
_EXCHANGES = np.array([x for x in range(200, 1000) if x % 100 != 11 and x != 555], dtype=np.int64)


def _phones(rng: np.random.Generator, zone: np.ndarray, present: np.ndarray) -> np.ndarray:
    """E.164 digits per member: +1 NPA NXX XXXX in North America, +33 6x/7x mobiles in France."""
    pick = rng.random(zone.size)
    line = rng.integers(0, 10_000, zone.size)
    exchange = _EXCHANGES[rng.integers(0, _EXCHANGES.size, zone.size)]
    french_rest = rng.integers(0, 10_000_000, zone.size)
    phone = np.zeros(zone.size, dtype=np.int64)
    for index, spec in enumerate(ZONES):
        mask = zone == index
        prefixes = np.array(spec.prefixes, dtype=np.int64)
        prefix = prefixes[(pick[mask] * prefixes.size).astype(np.int64)]
        if spec.locale == "fr_FR":
            phone[mask] = 33_000_000_000 + prefix * 10_000_000 + french_rest[mask]
        else:
            phone[mask] = 10_000_000_000 + prefix * 10_000_000 + exchange[mask] * 10_000 + line[mask]
    return np.where(present, phone, 0)


@lru_cache(maxsize=512)
def _ascii(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return folded.lower().replace(" ", "")


def _names(locale: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return _FIRST[locale[:2]], _LAST[locale]


def member_columns(pop: Population, writer: BulkWriter, first_id: int, start: int, stop: int,
                   entry_tier: str) -> dict[str, Any]:
    """Column values for members ``[start, stop)`` (row ids from ``first_id + start``)."""
    span = slice(start, stop)
    zones = pop.zone[span].tolist()
    firsts, lasts = [], []
    for z, f, last in zip(zones, pop.first[span].tolist(), pop.last[span].tolist(), strict=True):
        first_names, last_names = _names(ZONES[z].locale)
        firsts.append(first_names[f])
        lasts.append(last_names[last])
    numbers = range(start + 1, stop + 1)
    emails = [_email(f, last, n, style, EMAIL_DOMAINS[d]) if has else None
              for f, last, n, style, d, has in zip(firsts, lasts, numbers, pop.email_style[span].tolist(),
                                                   pop.email_domain[span].tolist(), pop.has_email[span].tolist(),
                                                   strict=True)]
    joined = writer.times(pop.joined_us[span])
    count = stop - start
    return {
        "id": np.arange(first_id + start, first_id + stop),
        "external_id": [f"S{n:07d}" for n in numbers],
        "first_name": firsts, "last_name": lasts, "email": emails,
        "phone": [f"+{p}" if p else None for p in pop.phone[span].tolist()],
        "locale": [ZONES[z].locale for z in zones], "time_zone": [ZONES[z].time_zone for z in zones],
        "tier": [entry_tier] * count, "points_balance": [0] * count,
        "joined_at": joined, "last_purchase_at": [None] * count,
        "birthday": writer.dates(pop.birthday_day[span]),
        "created_at": joined, "updated_at": joined,
    }


def _email(first: str, last: str, number: int, style: int, domain: str) -> str:
    # The member number makes every address unique without a lookup.
    f, la = _ascii(first), _ascii(last)
    local = (f"{f}.{la}{number}", f"{f[0]}{la}{number}", f"{la}.{f}.{number}")[style]
    return f"{local}@{domain}"


# -- reachability: consents and push subscriptions ----------------------------------------


@dataclass
class Reachability:
    """What :func:`write_reachability` wrote, and who could be e-mailed when."""

    consents: int
    push_subscriptions: int
    email_opt_in_us: np.ndarray  # when each member opted in to e-mail; -1 when they have not


def write_reachability(pop: Population, writer: BulkWriter, first_member_id: int, seed: int,
                       as_of_us: int) -> Reachability:
    """Insert channel consents (source "seed") and push subscriptions for the population."""
    rng = stream(seed, 2)
    subscriber = rng.random(pop.size) < 0.15
    sub_created = _after_joining(pop, as_of_us, share=rng.random(pop.size) * 0.8)
    email_in, email_row = _consent_draw(rng, pop.has_email, 0.75, 0.12)
    sms_in, sms_row = _consent_draw(rng, pop.phone != 0, 0.40, 0.08)
    push_in, push_row = _consent_draw(rng, subscriber, 0.90, 0.10)
    soon = _after_joining(pop, as_of_us, days=rng.exponential(20.0, pop.size))  # at sign-up, mostly
    later = _after_joining(pop, as_of_us, share=rng.random(pop.size))
    blocks = [("email", email_row, email_in, np.where(email_in, soon, later)),
              ("sms", sms_row, sms_in, np.where(sms_in, soon, later)),
              ("push", push_row, push_in, sub_created)]
    consents = _write_consents(writer, blocks, first_member_id)
    pushes = _write_push(rng, writer, np.flatnonzero(subscriber), sub_created, first_member_id, as_of_us)
    writer.sync_sequence("channel_consents", "push_subscriptions")
    email_at = np.where(email_in & email_row, soon, -1)
    return Reachability(consents=consents, push_subscriptions=pushes, email_opt_in_us=email_at)


def _write_consents(writer: BulkWriter, blocks: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    first_member_id: int) -> int:
    """Consent rows from ``(channel, has a row, opted in, recorded at)`` blocks, member by member."""
    member = np.concatenate([np.flatnonzero(row) for _, row, _, _ in blocks])
    order = np.argsort(member, kind="stable")  # channels in a fixed order within each member
    names = np.concatenate([np.full(int(row.sum()), name, dtype=object) for name, row, _, _ in blocks])[order]
    opted_in = np.concatenate([opted[row] for _, row, opted, _ in blocks])[order]
    recorded = np.concatenate([when[row] for _, row, _, when in blocks])[order]
    first = writer.next_id("channel_consents")
    return writer.insert("channel_consents", {
        "id": np.arange(first, first + member.size), "member_id": member[order] + first_member_id,
        "channel": names.tolist(), "opted_in": writer.bools(opted_in), "source": ["seed"] * member.size,
        "recorded_at": writer.times(recorded),
    })


def _consent_draw(rng: np.random.Generator, eligible: np.ndarray, opt_in: float,
                  opt_out: float) -> tuple[np.ndarray, np.ndarray]:
    """(opted in, has a consent row): opt-ins, explicit opt-outs, and members never asked."""
    u = rng.random(eligible.size)
    return eligible & (u < opt_in), eligible & (u < opt_in + opt_out)


def _after_joining(pop: Population, as_of_us: int, *, share: np.ndarray | None = None,
                   days: np.ndarray | None = None) -> np.ndarray:
    """An instant after joining and before ``as_of``: a ``share`` of the way, or ``days`` later."""
    span = as_of_us - pop.joined_us - US_PER_SECOND
    offset = span * share if share is not None else np.asarray(days) * US_PER_DAY
    moment = pop.joined_us + np.minimum(offset, span).astype(np.int64)
    return moment - moment % US_PER_SECOND


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _write_push(rng: np.random.Generator, writer: BulkWriter, members: np.ndarray, created: np.ndarray,
                first_member_id: int, as_of_us: int) -> int:
    """Web Push subscriptions (endpoint + P-256 key + auth secret) and FCM tokens, endpoints unique."""
    count = members.size
    webpush = rng.random(count) < 0.6
    noise = rng.bytes(count * 96)
    first = writer.next_id("push_subscriptions")
    endpoints: list[str] = []
    keys: list[str | None] = []
    auths: list[str | None] = []
    browser_key, browser_auth = sandbox_browser_keys()
    for n, is_web in enumerate(webpush.tolist()):
        chunk = noise[n * 96:(n + 1) * 96]
        unique = (first + n).to_bytes(5, "big")  # the row id in the token guarantees uniqueness
        if is_web:
            endpoints.append(f"https://push.example.net/wp/{_b64(unique + chunk[:13])}")
            keys.append(browser_key)  # the sandbox browser's: the sandbox can show what the member would see
            auths.append(browser_auth)
        else:
            endpoints.append(f"{_b64(unique + chunk[:11])}:APA91b{_b64(chunk[16:96])}")
            keys.append(None)
            auths.append(None)
    made = created[members]
    success = made + ((as_of_us - made) * rng.random(count)).astype(np.int64)
    writer.insert("push_subscriptions", {
        "id": np.arange(first, first + count), "member_id": members + first_member_id,
        "kind": np.where(webpush, "webpush", "fcm").tolist(), "endpoint": endpoints, "p256dh": keys,
        "auth": auths, "created_at": writer.times(made),
        "last_success_at": writer.optional_times(success - success % US_PER_SECOND, rng.random(count) < 0.7),
    })
    return count
