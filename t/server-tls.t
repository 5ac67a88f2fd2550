# TLS as operators configure it (issue 6): PAGI::Server's ssl option and
# pagi-server's --ssl-* flags, single process and prefork, every TCP
# listener TLS while Unix sockets stay plain, client certificates, the
# minimum version, and bad files reported at construction naming the path.
# The engine side (handshakes, the tls extension, ALPN, ciphers) is
# t/tls.t's subject. Certificates are made at test time with openssl.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(free_port start_cli stop_cli run_cli slurp wait_until stderr_of);
use PAGI::Test::PKI qw(need_tls_tools);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use IO::Socket::UNIX;
use Time::HiRes qw(time);
use Socket qw(SOCK_STREAM);

need_tls_tools();
$SIG{PIPE} = 'IGNORE';

my $pki = PAGI::Test::PKI->new;
my $dir = $pki->dir;
sub openssl { $pki->openssl(@_) }
$pki->ca('ca', 'PAGI Ops CA');
$pki->leaf('server', '/CN=localhost', serial => 2);
$pki->leaf('client', '/CN=ops-client', profile => 'client', serial => 3);
my ($CA, $CERT, $KEY) = ("$dir/ca.pem", "$dir/server.pem", "$dir/server.key");

my $app = "$dir/app.pl";
{
    open my $fh, '>', $app or die $!;
    print {$fh} <<'PERL';
use strict; use warnings; use Future::AsyncAwait;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    my $tls = $scope->{extensions}{tls};
    my $body = "scheme=$scope->{scheme} tls=" . ($tls ? sprintf('0x%04x', $tls->{tls_version} // 0) : 'none')
        . ' client_cert=' . ($tls && $tls->{client_cert_name} ? $tls->{client_cert_name} =~ s/\s+//gr : 'none') . " pid=$$";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL
    close $fh;
}

# GET over TLS → the body, or undef when the handshake or request failed.
sub tls_get {
    my ($port, %ssl) = @_;
    my ($body) = tls_exchange($port, %ssl);
    return $body;
}

# tls_exchange($port, %ssl) → ($body of a 200, $error): $error is the
# client's handshake error, or the alert that ended the first read (as
# OpenSSL names it; IO::Socket::SSL reports a received alert as a plain EOF,
# so it is taken from OpenSSL's error queue), or what else went wrong.
sub tls_exchange {
    my ($port, %ssl) = @_;
    Net::SSLeay::ERR_clear_error();
    my $c = IO::Socket::SSL->new(
        PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5,
        SSL_ca_file => $CA, SSL_verifycn_name => 'localhost', SSL_verifycn_scheme => 'http', %ssl,
    ) or return (undef, IO::Socket::SSL::errstr() || $@ || "connect: $!");
    print {$c} "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    my $buf = '';
    my $sel = IO::Select->new($c);
    my $deadline = time + 10;
    while ((my $left = $deadline - time) > 0) {
        last unless $c->pending || $sel->can_read($left);
        my $n = sysread $c, $buf, 65536, length $buf;
        last unless $n;
    }
    my @alerts;
    while (my $code = Net::SSLeay::ERR_get_error()) { push @alerts, Net::SSLeay::ERR_error_string($code) }
    my ($r) = parse_responses($buf);
    return ($r->{body}, undef) if $r && ($r->{status} // 0) == 200 && !$r->{incomplete};
    return (undef, join('; ', @alerts) || ($buf eq '' ? 'no response' : 'not a 200: ' . substr($buf, 0, 200)));
}

# Plain bytes to $port → ($received, $closed): $closed is true when the
# server closed the connection within $timeout, false on a timeout; dies
# when the connection cannot be made (a dead server is not "no response").
sub plain_exchange {
    my ($port, $bytes, $timeout) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or die "connect to 127.0.0.1:$port: $@";
    syswrite $sock, $bytes;
    my $sel = IO::Select->new($sock);
    my $deadline = time + $timeout;
    my $buf = '';
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread $sock, $buf, 65536, length $buf;
        return ($buf, 1) unless $n;    # EOF or reset: the server closed it
    }
    return ($buf, 0);
}

sub field { my ($body, $name) = @_; ($body // '') =~ /(?:^| )$name=(\S*)/ ? $1 : undef }

sub serve {
    my ($args, %opt) = @_;
    my $child = start_cli([ '--no-access-log', @$args, $app ], %opt);
    ok($child->{ready}, "pagi-server @$args is up") or diag(stderr_of($child));
    return $child;
}

subtest '--ssl-cert/--ssl-key: HTTPS with the tls extension; plain HTTP is not answered' => sub {
    my $child = serve([ '-E', 'development', '--ssl-cert', $CERT, '--ssl-key', $KEY ]);
    return unless $child->{ready};
    my $body = tls_get($child->{port});
    is(field($body, 'scheme'), 'https', 'scheme https') or diag(stderr_of($child));
    like(field($body, 'tls') // '', qr/\A0x030[34]\z/, 'the tls extension carries the version');
    my ($plain, $closed) = plain_exchange($child->{port}, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5);
    ok($closed, 'cleartext HTTP: the server closes the connection (no wait for a timeout)');
    # 0x15 = alert, then the record version, length 2, level 2 = fatal.
    like($plain, qr/\A\x15\x03[\x01-\x04]\x00\x02\x02.\z/s, 'after one fatal TLS alert and no HTTP response')
        or diag('received: ' . unpack('H*', $plain));
    is(field(tls_get($child->{port}), 'scheme'), 'https', 'and still serves HTTPS afterwards');
    like(stderr_of($child), qr/TLS on/, 'the banner says TLS on');
    like(stderr_of($child), qr{listening on https://127\.0\.0\.1:\d+/}, 'and shows an https address');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'TLS on every TCP listener, Unix sockets stay plain; prefork workers' => sub {
    my $port = free_port();
    my $path = "$dir/plain.sock";
    my $child = serve([ '--workers', 2, '--ssl-cert', $CERT, '--ssl-key', $KEY, '--listen', "127.0.0.1:$port", '--listen', $path ],
        no_port => 1, port => $port);
    return unless $child->{ready};
    my %pids;
    for (1 .. 6) { my $b = tls_get($port); $pids{ field($b, 'pid') // 'failed' }++ }
    ok(!$pids{failed}, 'the workers serve HTTPS') or diag(stderr_of($child));
    my $sock = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM);
    my $buf = '';
    if ($sock) {
        syswrite $sock, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        my $sel = IO::Select->new($sock);
        while ($sel->can_read(5)) { sysread($sock, $buf, 65536, length $buf) or last }
    }
    my ($r) = parse_responses($buf);
    is(field($r && $r->{body}, 'scheme'), 'http', 'the Unix socket speaks plain HTTP');
    is(field($r && $r->{body}, 'tls'), 'none', 'without the tls extension');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'client certificates: --ssl-ca with --ssl-verify-client require' => sub {
    my $child = serve([ '--ssl-cert', $CERT, '--ssl-key', $KEY, '--ssl-ca', $CA, '--ssl-verify-client', 'require' ]);
    return unless $child->{ready};
    my $with = tls_get($child->{port}, SSL_cert_file => "$dir/client.pem", SSL_key_file => "$dir/client.key");
    like(field($with, 'client_cert') // '', qr/CN=ops-client/, 'a client with a certificate signed by the CA is served, its name in scope');
    my ($body, $err) = tls_exchange($child->{port});
    is($body, undef, 'a client without a certificate gets no response');
    like($err // '', qr/alert certificate required/, 'it is refused with the certificate_required alert');
    like(field(tls_get($child->{port}, SSL_cert_file => "$dir/client.pem", SSL_key_file => "$dir/client.key"), 'client_cert') // '',
        qr/CN=ops-client/, 'and the server still serves a client with a certificate afterwards');
    is(stop_cli($child), 0, 'exit 0');
};

subtest '--ssl-min-version TLSv1_3' => sub {
    my $child = serve([ '--ssl-cert', $CERT, '--ssl-key', $KEY, '--ssl-min-version', 'TLSv1_3' ]);
    return unless $child->{ready};
    is(field(tls_get($child->{port}), 'tls'), '0x0304', 'a TLS 1.3 client is served with TLS 1.3');
    my ($body, $err) = tls_exchange($child->{port}, SSL_version => 'TLSv1_2');
    is($body, undef, 'a TLS 1.2-only client gets no response');
    like($err // '', qr/alert protocol version/, 'it is refused with the protocol_version alert');
    is(field(tls_get($child->{port}), 'tls'), '0x0304', 'and the server still serves TLS 1.3 afterwards');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'PAGI::Server->new checks the ssl files, naming the path' => sub {
    require PAGI::Server;
    my $app_code = sub { };
    my %ok = (cert_file => $CERT, key_file => $KEY);
    ok(eval { PAGI::Server->new(app => $app_code, ssl => \%ok); 1 }, 'good files are accepted') or diag($@);
    my @cases = (
        [ { %ok, cert_file => "$dir/nope.pem" }, qr/cert_file '\Q$dir\E\/nope\.pem' not found/, 'a missing certificate' ],
        [ { %ok, key_file => $CERT }, qr/key_file '\Q$CERT\E' does not contain a PEM private key/, 'a certificate given as the key' ],
        [ { %ok, ca_file => $KEY }, qr/ca_file '\Q$KEY\E' does not contain a PEM certificate/, 'a key given as the CA' ],
        [ { cert_file => $CERT }, qr/needs key_file/, 'no key' ],
        [ { %ok, verify_client => 'maybe' }, qr/verify_client must be none, optional or require/, 'a bad verify_client' ],
        [ { %ok, cipher_list => 'A B' }, qr/cipher_list must be colon-separated/, 'a bad cipher_list' ],
        [ { %ok, bogus => 1 }, qr/unknown key 'bogus'/, 'an unknown key' ],
    );
    for my $case (@cases) {
        my ($ssl, $like, $name) = @$case;
        ok(!eval { PAGI::Server->new(app => $app_code, ssl => $ssl); 1 }, "$name croaks");
        like($@, $like, "$name: the message says what and where");
    }
    my $warned = '';
    local $SIG{__WARN__} = sub { $warned .= $_[0] };
    ok(eval { PAGI::Server->new(app => $app_code, ssl => \%ok, disable_tls => 1); 1 }, 'disable_tls is accepted');
    like($warned, qr/disable_tls is set: the ssl option is ignored/, 'with a warning');
};

subtest 'a key that does not match the certificate: exit 2, one line' => sub {
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', "$dir/other.key");
    my $r = run_cli([ '--ssl-cert', $CERT, '--ssl-key', "$dir/other.key", '--port', free_port(), $app ]);
    is($r->{exit}, 2, 'exit 2');
    like($r->{stderr}, qr/^pagi-server: (?:.*option 'ssl': )?ssl_cert_file '\Q$CERT\E' \/ ssl_key_file '\Q$dir\E\/other\.key': .*(?:key|mismatch)/mi,
        'pagi-server says what is wrong, naming the files') or diag($r->{stderr});
    my @lines = grep { !/^\[pagi-server\]/ } split /\n/, $r->{stderr};
    is(scalar @lines, 1, 'in one line (besides log lines)') or diag($r->{stderr});
};

done_testing;
