"""Whether schedules and sensors start on: stopped unless APTEN_AUTOMATION_DEFAULT=running.

Dagster's own default. A UI opened to look around must not start calling Apten (or the sandbox) by
itself; a deployment that wants everything on from the start says so once, in its environment.
"""

import dagster as dg

from apten_assets.lib.config import AptenSettings


def schedule_status(settings: AptenSettings) -> dg.DefaultScheduleStatus:
    return (
        dg.DefaultScheduleStatus.RUNNING if settings.automation_running else dg.DefaultScheduleStatus.STOPPED
    )


def sensor_status(settings: AptenSettings) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if settings.automation_running else dg.DefaultSensorStatus.STOPPED
