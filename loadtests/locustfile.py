"""Locust users of the Order API: buyers, sellers and support agents of a second-hand shop.

Run by `python -m loadtests.run` (`make loadtest`) against a demo stack; by hand:
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080
Templated URLs are named (`/api/v1/orders/[id]`) so Locust aggregates them, and every
answer's body is checked against the contract; a lost race on a transition (409 with the
order's current state) is a correct answer, anything else unexpected is a failure.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Mapping
from typing import Any

from locust import HttpUser, between, task

from loadtests.checks import check_error, check_events, check_list, check_order
from proxy.demo import BUYERS, SELLERS, order_body

__all__ = ["BuyerUser", "SellerUser", "SupportUser"]

SEEDED = int(os.environ.get("STRANGLER_LOADTEST_ORDERS", "500"))
"""How many orders the stack was seeded with (ids 1..SEEDED exist)."""

_LOST_RACE = ("invalid_transition", "conflict")
_PER_PAGE = 10


class _OrderUser(HttpUser):
    """Shared request helpers: JSON in, JSON out, body checks, named URLs."""

    abstract = True
    wait_time = between(0.5, 1.5)
    user_id = 0
    role = "user"

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"X-User-Id": f"{self.role}-{self.user_id}"}

    def _list(self, query: str, name: str) -> list[dict[str, Any]]:
        """GET a listing; returns its items (empty when the answer was wrong)."""
        with self.client.get(
            f"/api/v1/orders?{query}&per_page={_PER_PAGE}",
            name=name,
            headers=self.headers,
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            problem = (
                _unexpected(resp)
                if resp.status_code != 200
                else check_list(doc, resp.headers.get("X-Total-Count"), per_page=_PER_PAGE)
            )
            if problem:
                resp.failure(problem)
                return []
            resp.success()
            return list(doc["items"])

    def _view(self, order_id: int) -> dict[str, Any] | None:
        with self.client.get(
            f"/api/v1/orders/{order_id}",
            name="/api/v1/orders/[id]",
            headers=self.headers,
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            problem = (
                _unexpected(resp)
                if resp.status_code != 200
                else check_order(doc, order_id=order_id)
            )
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return dict(doc)

    def _events(self, order_id: int) -> None:
        with self.client.get(
            f"/api/v1/orders/{order_id}/events",
            name="/api/v1/orders/[id]/events",
            headers=self.headers,
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            problem = (
                _unexpected(resp)
                if resp.status_code != 200
                else check_events(doc, order_id=order_id)
            )
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    def _act(
        self,
        order_id: int,
        action: str,
        body: dict[str, Any],
        to: str,
        expected_errors: Mapping[int, tuple[str, ...]],
    ) -> None:
        """POST a transition; 200 must show the order in state `to`; listed errors are fine."""
        with self.client.post(
            f"/api/v1/orders/{order_id}/{action}",
            json=body,
            name=f"/api/v1/orders/[id]/{action}",
            headers=self.headers,
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            if resp.status_code == 200:
                problem = check_order(doc, order_id=order_id, statuses=(to,))
            elif resp.status_code in expected_errors:
                problem = check_error(doc, expected_errors[resp.status_code])
            else:
                problem = _unexpected(resp)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


class BuyerUser(_OrderUser):
    """Browses their orders, looks at them and others', buys with idempotency keys."""

    weight = 6
    role = "buyer"

    def on_start(self) -> None:
        self.user_id = random.choice(BUYERS)
        super().on_start()
        self.mine: list[int] = []

    @task(5)
    def browse(self) -> None:
        """My orders, newest first."""
        items = self._list(f"buyer_id={self.user_id}", "/api/v1/orders?buyer_id=[id]")
        self.mine = [o["id"] for o in items] or self.mine

    @task(8)
    def view(self) -> None:
        """One of my orders, or one from the shop's history."""
        if self.mine and self.rng.random() < 0.5:
            self._view(self.rng.choice(self.mine))
        else:
            self._view(self.rng.randint(1, SEEDED))

    @task(3)
    def timeline(self) -> None:
        """Where is my parcel: an order's events."""
        self._events(self.rng.choice(self.mine) if self.mine else self.rng.randint(1, SEEDED))

    @task(2)
    def buy(self) -> None:
        """Check out; sometimes the answer is lost and the app retries with the same key."""
        body = order_body(self.rng, self.user_id, self.rng.choice(SELLERS))
        key = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        with self.client.post(
            "/api/v1/orders", json=body, headers=key, catch_response=True
        ) as resp:
            doc = _json(resp)
            problem = (
                _unexpected(resp)
                if resp.status_code != 201
                else check_order(doc, statuses=("paid",))
                or (None if resp.headers.get("Location") else "create: no Location header")
            )
            if problem:
                resp.failure(problem)
                return
            resp.success()
            created = int(doc["id"])
        self.mine.insert(0, created)
        if self.rng.random() < 0.2:
            with self.client.post(
                "/api/v1/orders",
                json=body,
                headers=key,
                name="/api/v1/orders (idempotent retry)",
                catch_response=True,
            ) as again:
                doc = _json(again)
                if again.status_code != 200:
                    again.failure(f"retry: status {again.status_code}, expected 200")
                elif not isinstance(doc, dict) or doc.get("id") != created:
                    again.failure("retry: another order than the first answer")
                else:
                    again.success()

    @task(1)
    def confirm_receipt(self) -> None:
        """Complete a delivered order of mine."""
        items = self._list(
            f"buyer_id={self.user_id}&status=delivered", "/api/v1/orders?buyer_id=[id]&status=[s]"
        )
        if items:
            self._act(items[0]["id"], "complete", {}, "completed", {409: _LOST_RACE})


class SellerUser(_OrderUser):
    """Ships paid orders; the carrier's scan marks shipped ones delivered."""

    weight = 2
    role = "seller"

    def on_start(self) -> None:
        self.user_id = random.choice(SELLERS)
        super().on_start()

    @task(3)
    def ship(self) -> None:
        """Ship the oldest-listed paid order."""
        items = self._list(
            f"seller_id={self.user_id}&status=paid", "/api/v1/orders?seller_id=[id]&status=[s]"
        )
        if items:
            tracking = {"tracking_number": f"TRK{self.rng.randint(10**8, 10**9 - 1)}"}
            self._act(items[0]["id"], "ship", tracking, "shipped", {409: _LOST_RACE})

    @task(2)
    def deliver(self) -> None:
        """The carrier delivers a shipped order."""
        items = self._list(
            f"seller_id={self.user_id}&status=shipped", "/api/v1/orders?seller_id=[id]&status=[s]"
        )
        if items:
            self._act(items[0]["id"], "deliver", {}, "delivered", {409: _LOST_RACE})

    @task(1)
    def timeline(self) -> None:
        """Look at one of the shop's orders' events."""
        self._events(self.rng.randint(1, SEEDED))


class SupportUser(_OrderUser):
    """Opens disputes for unhappy buyers, then refunds or resolves them."""

    weight = 1
    role = "support"

    def on_start(self) -> None:
        self.user_id = random.randint(1, 20)
        super().on_start()

    @task(1)
    def open_dispute(self) -> None:
        """A buyer says the item is not as described."""
        items = self._list("status=delivered", "/api/v1/orders?status=[s]")
        if items:
            order = self.rng.choice(items)
            body = {"actor": f"support:{self.user_id}", "reason": "item not as described"}
            errors = {409: (*_LOST_RACE, "dispute_window_closed")}
            self._act(order["id"], "dispute", body, "disputed", errors)

    @task(2)
    def settle(self) -> None:
        """Refund part or all of a disputed order, or resolve it for the seller."""
        items = self._list("status=disputed", "/api/v1/orders?status=[s]")
        if not items:
            return
        oid = self.rng.choice(items)["id"]
        actor = {"actor": f"support:{self.user_id}"}
        self._events(oid)
        if self.rng.random() < 0.4:
            self._act(oid, "resolve", actor, "completed", {409: _LOST_RACE})
        else:
            body = {**actor, "amount": "1.00"} if self.rng.random() < 0.5 else actor
            errors = {409: _LOST_RACE, 422: ("refund_exceeds_paid",)}
            self._act(oid, "refund", body, "refunded", errors)

    @task(1)
    def look_up(self) -> None:
        """A buyer calls about an order."""
        self._view(self.rng.randint(1, SEEDED))


def _unexpected(resp: Any) -> str:
    """Why an answer with an unexpected status failed (no status: the connection error)."""
    if not resp.status_code:
        return f"no answer: {resp.error}"
    return f"status {resp.status_code}"


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None
