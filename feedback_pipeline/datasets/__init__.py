"""Fine-tuning datasets built from cleaned feedback: splits, SFT and KTO records, fingerprinted manifests."""
