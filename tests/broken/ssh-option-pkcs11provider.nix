# expect: instances.www-1.ssh.PKCS11Provider
# expect: ~/.ssh/config
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; ssh.PKCS11Provider = "/tmp/evil.so"; };
}
