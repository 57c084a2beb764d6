"""Which background duties an instance runs, from the cluster config (Synapse's keys).

Features behind some duties come in later issues (federation sending, pushers, media, user directory,
appservices); the decision of *which* process runs them is made here, once, so exactly one process
(or the configured set) does each job and the others do not.
"""

from __future__ import annotations

from hs.config import HomeserverConfig
from hs.streams.base import stable_shard

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
    if instance in pusher_instances(config):
        duties.add(PUSHER)
    # The named instance (a media worker, typically); main only while it runs the media repository.
    media = config.media_instance_running_background_jobs or "main"
    if media == instance and (media != "main" or config.enable_media_repo):
        duties.add(MEDIA_BACKGROUND)
    if (config.update_user_directory_from_worker or "main") == instance:
        duties.add(USER_DIRECTORY)
    if (config.notify_appservices_from_worker or "main") == instance:
        duties.add(APPSERVICE_NOTIFIER)
    return duties


def pusher_instances(config: HomeserverConfig) -> list[str]:
    """The instances that deliver push notifications: `pusher_instances`, or main unless
    `start_pushers` is off."""
    return list(config.pusher_instances) or (["main"] if config.start_pushers else [])


def pusher_instance_for(config: HomeserverConfig, user_id: str) -> str | None:
    """The one instance that delivers a user's push notifications (None: nobody pushes). Users are
    sharded across `pusher_instances` by a hash of their ID, as Synapse does, so each notification is
    delivered once however many pusher instances run."""
    instances = pusher_instances(config)
    if not instances:
        return None
    return instances[stable_shard(user_id, len(instances))]
