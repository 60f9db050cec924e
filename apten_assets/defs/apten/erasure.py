"""`apten_erase_leads`: erasure on request, as a job of one op over `lib.erasure.erase_leads`.

    dagster job execute -m apten_assets.definitions -j apten_erase_leads \\
        -c erase.yaml     # ops: {erase_leads: {config: {lead_ids: ["..."]}}}
"""

import dagster as dg
from pydantic import Field

from apten_assets.defs.apten.assets import WRITE_POOL
from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.erasure import erase_leads as erase
from apten_assets.webhooks.inbox import Inbox

ERASE_JOB_NAME = "apten_erase_leads"


class EraseLeadsConfig(dg.Config):
    """Which leads to erase."""

    lead_ids: list[str] = Field(
        description="Apten lead ids to erase. Run config stays in Dagster's run history: delete the run "
        "there too if the ids themselves must go.",
    )
    discard_deleted_data: bool = Field(
        default=True,
        description="Rewrite the warehouse storage so deleted rows' bytes are gone too (DuckDB: a copy "
        "of the file, as large as the live data). Turn off only to batch several erasures, then run "
        "the last one with it on.",
    )


@dg.op(name="erase_leads", pool=WRITE_POOL, out=dg.Out(dg.Nothing))
def erase_leads_op(context: dg.OpExecutionContext, config: EraseLeadsConfig, warehouse: AptenWarehouse):
    settings = AptenSettings.from_env()
    report = erase(
        warehouse.get_store,
        Inbox(settings.webhook_inbox),
        config.lead_ids,
        salt=settings.pii_salt,
        log=context.log,
        discard_deleted_data=config.discard_deleted_data,
    )
    # Counts only: the ids and every value of the erased leads stay out of the event log.
    metadata = {
        "leads_requested": report.leads_requested,
        "leads_newly_erased": report.newly_recorded,
        "rows_removed": report.rows_total,
        **{f"rows_removed_{table}": n for table, n in sorted(report.rows.items())},
        "inbox_files_removed": report.inbox_files,
        "storage_rewritten": report.file_rewritten,
    }
    yield dg.Output(None, metadata=metadata)


def build_erasure_job() -> dg.JobDefinition:
    @dg.job(
        name=ERASE_JOB_NAME,
        description=(
            "Erasure on request: removes every row of the named leads and of their calls from every "
            "table, their webhook inbox files and quarantined payloads, and records them in "
            "apten.erased_leads (hashed ids) so later syncs drop them while Apten still returns them. "
            "Reports counts only; running it again removes nothing more."
        ),
        tags={"apten/job": "erasure"},
    )
    def apten_erase_leads() -> None:
        erase_leads_op()

    return apten_erase_leads
