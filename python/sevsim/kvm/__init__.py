"""The KVM-like policy layer: what KVM decides (ASIDs, which flush, when, on which CPUs), on top of
the engine's hardware model. Names follow the kernel (arch/x86/kvm/svm/sev.c, virt/kvm/kvm_main.c)."""

from .sev import AsidExhausted, ConfigError, HostMemory, Kvm, SevsimError, SevVm, VmType
from .strategies import STRATEGIES, CacheStrategy, get_strategy

__all__ = [
    "AsidExhausted", "CacheStrategy", "ConfigError", "HostMemory", "Kvm", "STRATEGIES",
    "SevVm", "SevsimError", "VmType", "get_strategy",
]
