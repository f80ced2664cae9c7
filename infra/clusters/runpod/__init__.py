"""RunPod behind Ray's external-provider extension point: the GraphQL client, the node provider, node set-up."""
