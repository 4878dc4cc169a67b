"""Operator settings: one validated object per process, from ``VGATE_OPERATOR_*`` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VGATE_OPERATOR_", extra="forbid")

    #: Every resource is reconciled at least this often: drift repair and status refresh.
    resync_interval_s: float = Field(60.0, gt=0)
    #: Back-off after an API error before the next attempt.
    retry_delay_s: float = Field(15.0, gt=0)
