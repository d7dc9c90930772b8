"""The aws provider: EC2 instances (api: clients and translated errors; ec2; hosts; options),
then the deployment layer (mlcluster/deploy) on them, as on the ssh provider's hosts."""
