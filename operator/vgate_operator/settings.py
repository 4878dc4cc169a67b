"""Operator settings: one validated object per process, from ``VGATE_OPERATOR_*`` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VGATE_OPERATOR_", extra="forbid")

    #: Every resource is reconciled at least this often: drift repair and status refresh.
    resync_interval_s: float = Field(60.0, gt=0)
    #: Back-off after the API server failed or was unreachable, before the next attempt.
    retry_delay_s: float = Field(15.0, gt=0)
    #: Back-off after the API server refused a write (a 4xx such as 403 or 422) or a foreign
    #: object holds a child's name: retrying sooner would only repeat the refusal. Any change
    #: of the resource reconciles at once regardless.
    refused_retry_delay_s: float = Field(300.0, gt=0)
    #: How often the builtin autoscaler reads the gateways' load and decides (Knative: 2 s).
    autoscale_interval_s: float = Field(2.0, gt=0, le=60)
    #: How long one gateway has to answer ``GET /load`` before it is left out of that round.
    load_timeout_s: float = Field(1.0, gt=0, le=30)
