"""The aws provider: EC2 instances (api: clients and translated errors; ec2; hosts; options), then the ssh provider on them."""
