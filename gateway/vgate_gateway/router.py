"""Picks the upstream for one request: the model's candidates, then its strategy."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from vgate_gateway.errors import OpenAIError, unavailable
from vgate_gateway.protocol import ParsedRequest
from vgate_gateway.routing import RouteRequest, Strategy, build_strategy
from vgate_gateway.upstreams import Upstream, UpstreamPool


class Router:
    def __init__(
        self,
        pool: UpstreamPool,
        default: str,
        per_model: Mapping[str, str] | None = None,
        *,
        declared_models: Collection[str] = (),
        retry_after_s: int = 1,
    ) -> None:
        self._pool = pool
        #: Models configured to exist (Kubernetes discovery's Services), even with no endpoint yet.
        self._declared = frozenset(declared_models)
        self._default_name = default
        self._per_model_names = dict(per_model or {})
        # Validate every configured name now: a typo fails at start-up, not on traffic.
        self._default = build_strategy(default)
        self._per_model: dict[str, Strategy] = {
            m: build_strategy(n) for m, n in self._per_model_names.items()
        }
        self._retry_after = retry_after_s

    def strategy_name(self, model: str) -> str:
        return self._per_model_names.get(model, self._default_name)

    def strategy_for(self, model: str) -> Strategy:
        return self._per_model.get(model, self._default)

    def pick(self, req: ParsedRequest, route: RouteRequest, exclude: Sequence[str] = ()) -> Upstream:
        """The upstream for ``req``, or an OpenAI error: 404 unknown model, 503 none healthy."""
        candidates = self._pool.routable(req.model, exclude=exclude)
        if candidates:
            return self.strategy_for(req.model).choose(candidates, route)
        known = req.model in self._declared or self._pool.known_model(req.model)
        if known or self._models_unknown():
            raise unavailable(
                f"No healthy worker is serving model '{req.model}' right now. Retry shortly.",
                code="no_healthy_upstream",
                retry_after_s=self._retry_after,
            )
        raise OpenAIError(
            404,
            f"The model '{req.model}' does not exist or is not served here. See GET /v1/models.",
            code="model_not_found",
            param="model",
        )

    def _models_unknown(self) -> bool:
        """Some worker has never answered, so the model may well be one it serves."""
        return any(not u.models for u in self._pool.all())
