"""Which background duties an instance runs, from the cluster config (Synapse's keys).

Features behind some duties come in later issues (federation sending, pushers, media, user directory,
appservices); the decision of *which* process runs them is made here, once, so exactly one process
(or the configured set) does each job and the others do not.
"""

from __future__ import annotations

from hs.config import HomeserverConfig

BACKGROUND_TASKS = "background_tasks"
FEDERATION_SENDER = "federation_sender"
PUSHER = "pusher"
MEDIA_BACKGROUND = "media_background_jobs"
USER_DIRECTORY = "user_directory"
APPSERVICE_NOTIFIER = "appservice_notifier"


def duties_for(config: HomeserverConfig, instance: str) -> set[str]:
    duties: set[str] = set()
    if config.run_background_tasks_on == instance:
        duties.add(BACKGROUND_TASKS)
    senders = config.federation_sender_instances or (["main"] if config.send_federation else [])
    if instance in senders and (config.send_federation or config.federation_sender_instances):
        duties.add(FEDERATION_SENDER)
    pushers = config.pusher_instances or (["main"] if config.start_pushers else [])
    if instance in pushers and (config.start_pushers or config.pusher_instances):
        duties.add(PUSHER)
    media = config.media_instance_running_background_jobs or "main"
    if media == instance and config.enable_media_repo:
        duties.add(MEDIA_BACKGROUND)
    if (config.update_user_directory_from_worker or "main") == instance:
        duties.add(USER_DIRECTORY)
    if (config.notify_appservices_from_worker or "main") == instance:
        duties.add(APPSERVICE_NOTIFIER)
    return duties
