package PAGI::Test::PKI;
# Throw-away certificates for the TLS tests, made with the openssl command
# in a temporary directory: certificate authorities and leaf certificates
# (EC P-256, two days) for servers (localhost, 127.0.0.1) and clients.
#
#   use PAGI::Test::PKI qw(need_tls_tools);
#   need_tls_tools();                       # skip, or fail under CI=true
#   my $pki = PAGI::Test::PKI->new;         # its own directory
#   $pki->ca('ca', 'Test CA');              # ca.pem, ca.key
#   $pki->leaf('server', '/CN=localhost');  # server.pem, server.key, signed by ca
#   $pki->leaf('client', '/CN=a-client', profile => 'client', serial => 3);
#   $pki->path('server.pem');
use strict;
use warnings;

use parent 'Exporter';
use File::Temp ();
use POSIX ();
use Test::More ();

our @EXPORT_OK = qw(need_tls_tools);

my $CONFIG = <<'CNF';
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

my @EC = qw(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes);

# Ends the test file unless openssl and IO::Socket::SSL are there: a skip,
# or under CI=true (where ./setup.sh installs both) a failure.
sub need_tls_tools {
    my @missing;
    push @missing, 'the openssl command' unless grep { -x "$_/openssl" } split /:/, $ENV{PATH} // '';
    push @missing, 'IO::Socket::SSL (Debian: libio-socket-ssl-perl)' unless eval { require IO::Socket::SSL; 1 };
    return unless @missing;
    my $why = join(' and ', @missing) . ' not installed';
    if (($ENV{CI} // '') eq 'true') {
        Test::More::fail("CI=true and $why: ./setup.sh installs it");
        Test::More::done_testing();
        exit;
    }
    Test::More::plan(skip_all => $why);
}

# new(dir => $existing_dir): defaults to a fresh temporary directory.
sub new {
    my ($class, %o) = @_;
    my $tmp = $o{dir} ? undef : File::Temp->newdir('pagi-pki-XXXXXX', TMPDIR => 1);
    my $self = bless { tmp => $tmp, dir => $o{dir} // $tmp->dirname }, $class;
    _spew("$self->{dir}/openssl.cnf", $CONFIG);
    return $self;
}

sub dir  { $_[0]{dir} }
sub path { "$_[0]{dir}/$_[1]" }

# A self-signed CA: NAME.pem and NAME.key.
sub ca {
    my ($self, $name, $cn) = @_;
    $self->openssl('req', '-x509', @EC, '-keyout', $self->path("$name.key"), '-out', $self->path("$name.pem"),
        '-days', 2, '-subj', "/CN=$cn", '-config', $self->path('openssl.cnf'), '-extensions', 'ca');
    return $self->path("$name.pem");
}

# A leaf certificate NAME.pem with key NAME.key; profile server (default)
# or client; signed by the CA named `ca` (default 'ca').
sub leaf {
    my ($self, $name, $subject, %o) = @_;
    my $ca = $o{ca} // 'ca';
    my $cnf = $self->path('openssl.cnf');
    $self->openssl('req', '-new', @EC, '-keyout', $self->path("$name.key"), '-out', $self->path("$name.csr"),
        '-subj', $subject, '-config', $cnf);
    $self->openssl('x509', '-req', '-in', $self->path("$name.csr"), '-CA', $self->path("$ca.pem"),
        '-CAkey', $self->path("$ca.key"), '-set_serial', $o{serial} // 2, '-days', $o{days} // 2,
        '-out', $self->path("$name.pem"), '-extfile', $cnf, '-extensions', $o{profile} // 'server');
    return $self->path("$name.pem");
}

# Runs openssl with @args, its output kept in openssl.log; BAIL_OUT on failure.
sub openssl {
    my ($self, @args) = @_;
    my $log = $self->path('openssl.log');
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        { exec 'openssl', @args }
        POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return 1 if $? == 0;
    my $out = do { open my $fh, '<', $log; local $/; <$fh> } // '';
    Test::More::BAIL_OUT("openssl @args failed: $out");
}

sub _spew {
    my ($path, $data) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print {$fh} $data;
    close $fh or die "$path: $!";
}

1;
