"""What the machine really has now, measured or None, each value with how it was got.

profile.get_profile() -> Profile (schema gpcrun.profile/1), profile.fingerprint(); host.read_host_memory()
(cheap, for the watchdog); nvml.read_gpus() / nvml.NvmlSession.sample(); membw, cudart and fio measure.
One module per outside dependency: nvml (pynvml), host (psutil, /proc, /sys), membw (numpy), cudart (libcudart),
fio (the fio binary).
"""
