"""The data-quality checks of a unit (a date and a bucket of sites): each result belongs to the
unit's partition, and each can fail (data_acq_tests/test_process_dagster.py shows every one
failing)."""

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    MultiPartitionsDefinition,
    PreviewWarning,
)

from data_acq.curate.units import FUTURE_TOLERANCE, UnitResult

MAX_REJECTED_SHARE = 0.01
MIN_COMPLETENESS = 0.95


def check_specs(units: MultiPartitionsDefinition) -> list[AssetCheckSpec]:
    """The checks of a unit, each in the unit's partition."""
    # Partitioned checks are a preview feature of Dagster 1.13, and the one that makes a check
    # result belong to its unit rather than to the asset as a whole: worth it, said here once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(
                "rejected_share",
                asset="rejects",
                partitions_def=units,
                description=f"At most {MAX_REJECTED_SHARE:.0%} of the unit's payloads rejected",
            ),
            AssetCheckSpec(
                "duplicates_removed",
                asset="readings",
                partitions_def=units,
                description="No reading twice in the unit's files, read back after writing",
            ),
            AssetCheckSpec(
                "conflicting_readings",
                asset="readings",
                partitions_def=units,
                description="No reading arrived with another value under the key of one received "
                "before (a logger whose clock jumped back): the first received is kept",
            ),
            AssetCheckSpec(
                "completeness",
                asset="completeness_daily",
                partitions_def=units,
                description=f"Every site delivered at least {MIN_COMPLETENESS:.0%} of the minutes the "
                "unit's data covers (its first payload to its last, any site's)",
            ),
            AssetCheckSpec(
                "clock_skew",
                asset="readings",
                partitions_def=units,
                description=f"No payload time is ahead of its receive time by more than "
                f"{FUTURE_TOLERANCE.seconds // 60} minutes",
            ),
            AssetCheckSpec(
                "sites_reporting",
                asset="readings",
                partitions_def=units,
                description="No site fell silent for more than an hour before the unit's newest "
                "payload (any site's)",
            ),
        ]


def unit_checks(result: UnitResult, now: datetime | None = None) -> Iterator[AssetCheckResult]:
    yield AssetCheckResult(
        check_name="rejected_share",
        asset_key="rejects",
        passed=result.rejected_share <= MAX_REJECTED_SHARE,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "rejected_payloads": result.rejected_payloads,
            "accepted_payloads": result.accepted_payloads,
            "share": round(result.rejected_share, 5),
        },
    )
    yield AssetCheckResult(
        check_name="duplicates_removed",
        asset_key="readings",
        passed=result.duplicates_left == 0,
        metadata={
            "removed": result.duplicates_removed,
            "left": result.duplicates_left,
        },
    )
    yield AssetCheckResult(
        check_name="conflicting_readings",
        asset_key="readings",
        passed=result.conflicts == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"conflicts": result.conflicts, "redeliveries": result.duplicates_removed},
    )
    # a day not begun has no ratio yet: nothing to judge
    worst = sorted(
        ((site, ratio) for site, ratio in result.completeness.items() if ratio is not None),
        key=lambda item: item[1],
    )
    yield AssetCheckResult(
        check_name="completeness",
        asset_key="completeness_daily",
        passed=all(ratio >= MIN_COMPLETENESS for _, ratio in worst),
        severity=AssetCheckSeverity.WARN,
        metadata={
            "sites": len(worst),
            "below_target": sum(ratio < MIN_COMPLETENESS for _, ratio in worst),
            "worst_sites": MetadataValue.json({str(site): ratio for site, ratio in worst[:10]}),
        },
    )
    yield AssetCheckResult(
        check_name="clock_skew",
        asset_key="readings",
        passed=result.ahead_of_receipt == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "readings_ahead_of_receipt": result.ahead_of_receipt,
            "max_lag_s": round(result.max_lag_s, 1) if result.max_lag_s is not None else "none",
        },
    )
    silent = result.silent_sites(now or datetime.now(UTC))
    yield AssetCheckResult(
        check_name="sites_reporting",
        asset_key="readings",
        passed=not silent,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "sites": result.sites,
            "silent_sites": MetadataValue.json({str(site): m for site, m in silent.items()}),
            "last_payload": max(result.last_payload.values()).isoformat()
            if result.last_payload
            else "none",
        },
    )
