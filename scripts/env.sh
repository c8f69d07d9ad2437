# Offline settings every ptgpt process wants (source it): no hub, no telemetry, no driver downloads.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export SE_OFFLINE=true SE_AVOID_STATS=true
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# A fresh Prefect database takes ~25 s to migrate on 2 cores; the default 20 s wait is too short.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export MPLBACKEND=Agg
