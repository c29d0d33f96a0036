"""What the machine really has now, measured or None, each value with how it was got.

profile.get_profile() -> Profile (schema gpcrun.profile/1), profile.fingerprint(); host.read_host_memory()
(cheap, for the watchdog); nvml.read_gpus() / nvml.NvmlSession.sample(); membw, cudart and fio measure.
One module per outside dependency: nvml (pynvml), host (psutil), membw (numpy), cudart (libcudart), fio (the fio
binary); pure parsing beside them: cgroup (cgroup v1/v2 files and PSI under an injectable root), platform
(container, WSL, ISA, AMX), gpu (GPU documents, CUDA_VISIBLE_DEVICES), hostfs (reads under the root).
"""
