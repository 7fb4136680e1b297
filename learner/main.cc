// Placeholder until the real main lands.
int main() { return 0; }
