"""lora-bench: is LoRA faster and cheaper than full fine-tuning here, and if not, why?"""
