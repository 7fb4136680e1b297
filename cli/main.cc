// Placeholder until the real tool lands.
int main() { return 0; }
