"""lora-bench: is LoRA faster and cheaper than full fine-tuning here, and if not, why?"""
import logging as _logging

# Lines a job's console would print on every import and say nothing about the measurement:
# torch's pytree registry warns once per enum that torchao registers, and bitsandbytes warns that
# an optional CPU kernel package is absent (its own kernels run instead).
for _name in ("torch.utils._pytree", "bitsandbytes", "bitsandbytes.backends.cpu.ops", "torchao", "torchao.kernel.intmm"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
