"""Who generates the traffic: accounts of Zipf-distributed size and the users inside them.

Account k (1-based rank) draws a share of all activity proportional to ``1 / k**ZIPF_S``
and has about ``MAX_USERS / k**USERS_S`` users, so a handful of big customers dominate
usage while the median account is small: the shape metering and k-anonymity must cope with.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Final, Literal

from streams.generate.catalog import (
    BILLING_FALLBACK_CURRENCY,
    CURRENCY_RATES,
    PLAN_PRICES_USD,
)
from streams.generate.places import COUNTRIES, AddressPool, Country

ZIPF_S: Final = 1.1
USERS_S: Final = 0.7
MAX_USERS: Final = 40
# Share of users whose browser sends Do-Not-Track / Global Privacy Control.
DNT_SHARE: Final = 0.08
GPC_SHARE: Final = 0.04
# Share of users whose client stamps events with its local offset instead of UTC.
LOCAL_OFFSET_SHARE: Final = 0.15
# Share of users who roam: they live in another country than their account's.
FOREIGN_USER_SHARE: Final = 0.2
# Share of users on IPv6 (when their country has IPv6 blocks here).
IPV6_SHARE: Final = 0.35
# Share of accounts that end during the period, and how.
CHURN_SHARE: Final = 0.05
CHURN_PATHS: Final[tuple[tuple[Literal["disabled", "terminated"], ...], ...]] = (
    ("disabled",),
    ("terminated",),
    ("disabled", "terminated"),
)

COUNTRY_CUM_WEIGHTS: Final = tuple(itertools.accumulate(c.weight for c in COUNTRIES))
_POOLS: Final = {c.code: AddressPool.of(c) for c in COUNTRIES}


def pick_country(rng: random.Random) -> Country:
    return rng.choices(COUNTRIES, cum_weights=COUNTRY_CUM_WEIGHTS)[0]


def pool_of(country: Country) -> AddressPool:
    return _POOLS[country.code]


@dataclass(slots=True)
class User:
    user_id: str
    country: Country
    prefers_ipv6: bool
    home_ip: str
    user_agents: tuple[str, ...]
    dnt: bool
    gpc: bool
    local_offset: bool
    opted_out: bool = False
    seen: bool = False


@dataclass(slots=True)
class Account:
    account_id: str
    rank: int
    country: Country
    users: list[User]
    user_cum_weights: tuple[float, ...]
    plan: str
    currency: str
    server_ip: str
    churn: tuple[Literal["disabled", "terminated"], ...]
    # Latest occurred_at (µs) of any event scheduled for the account so far.
    last_event_us: int = 0


def _hex_id(rng: random.Random, prefix: str, bits: int) -> str:
    return f"{prefix}{rng.getrandbits(bits):0{bits // 4}x}"


def _user(rng: random.Random, account_country: Country, user_agents: tuple[str, ...]) -> User:
    country = pick_country(rng) if rng.random() < FOREIGN_USER_SHARE else account_country
    prefers_ipv6 = rng.random() < IPV6_SHARE
    agents = tuple(rng.choice(user_agents) for _ in range(1 + (rng.random() < 0.5)))
    return User(
        user_id=_hex_id(rng, "usr_", 48),
        country=country,
        prefers_ipv6=prefers_ipv6,
        home_ip=pool_of(country).pick(rng, ipv6=prefers_ipv6),
        user_agents=agents,
        dnt=rng.random() < DNT_SHARE,
        gpc=rng.random() < GPC_SHARE,
        local_offset=rng.random() < LOCAL_OFFSET_SHARE,
    )


def make_accounts(rng: random.Random, n: int, user_agents: tuple[str, ...]) -> list[Account]:
    """``n`` accounts, index i having Zipf rank i+1 (ids are random, so rank does not leak)."""
    accounts = []
    for rank in range(1, n + 1):
        country = pick_country(rng)
        n_users = max(1, round(MAX_USERS / rank**USERS_S))
        users = [_user(rng, country, user_agents) for _ in range(n_users)]
        # The first user is the owner and the most active; the rest fall off like 1/j.
        user_cum = tuple(itertools.accumulate(1.0 / j for j in range(1, n_users + 1)))
        plan = PLAN_PRICES_USD[min(3, int(rng.expovariate(1.2) + (rank <= 5) * 2))][0]
        currency = (
            country.currency if country.currency in CURRENCY_RATES else BILLING_FALLBACK_CURRENCY
        )
        churn = rng.choice(CHURN_PATHS) if rng.random() < CHURN_SHARE else ()
        account_id = _hex_id(rng, "acc_", 48)
        accounts.append(
            Account(
                account_id=account_id,
                rank=rank,
                country=country,
                users=users,
                user_cum_weights=user_cum,
                plan=plan,
                currency=currency,
                server_ip=pool_of(country).pick(rng, ipv6=False),
                churn=churn,
            )
        )
    return accounts


def account_cum_weights(n: int) -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / k**ZIPF_S for k in range(1, n + 1)))
