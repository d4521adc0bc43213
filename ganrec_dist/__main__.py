from ganrec_dist.operations.cli import console

console()
