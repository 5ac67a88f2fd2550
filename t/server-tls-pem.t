# TLS material is read once, when the server is built (issue 9, item 12):
# PAGI::Server's ssl option takes the PEM text itself (cert_pem, key_pem,
# ca_pem), the engine is handed text and never reopens a file, and a
# prefork worker started later (HUP, after the files are gone) gets
# the text its master read. pagi-server relies on this to read a root-only
# key before it drops privileges (t/cli-privileges.t runs that as root).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli slurp wait_until stderr_of);
use PAGI::Test::PKI qw(need_tls_tools);
use File::Copy ();
use File::Temp ();
use POSIX ();

need_tls_tools();
$SIG{PIPE} = 'IGNORE';

my $pki = PAGI::Test::PKI->new;
my $dir = $pki->dir;
sub openssl { $pki->openssl(@_) }
$pki->ca('ca', 'PAGI PEM CA');
$pki->leaf('server', '/CN=localhost', serial => 2);
openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', "$dir/other.key");
my ($CERT_PEM, $KEY_PEM, $OTHER_KEY_PEM) = map { slurp("$dir/$_") } qw(server.pem server.key other.key);

my $app_file = "$dir/app.pl";
{
    open my $fh, '>', $app_file or die $!;
    print {$fh} <<'PERL';
use strict; use warnings; use Future::AsyncAwait;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "scheme=$scope->{scheme} pid=$$" });
};
$app;
PERL
    close $fh;
}

# GET over TLS, verified against the test CA → the body, or undef.
sub tls_get {
    my ($port) = @_;
    my $c = IO::Socket::SSL->new(
        PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5,
        SSL_ca_file => "$dir/ca.pem", SSL_verifycn_name => 'localhost', SSL_verifycn_scheme => 'http',
    ) or return undef;
    print {$c} "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    my $buf = '';
    while (sysread $c, $buf, 65536, length $buf) { }
    my ($r) = parse_responses($buf);
    return $r && ($r->{status} // 0) == 200 ? $r->{body} : undef;
}

subtest 'ssl => { cert_pem, key_pem } is checked at construction' => sub {
    require PAGI::Server;
    my $app = sub { };
    ok(eval { PAGI::Server->new(app => $app, ssl => { cert_pem => $CERT_PEM, key_pem => $KEY_PEM }); 1 },
        'PEM text alone is accepted') or diag($@);
    my @cases = (
        [ { cert_pem => $CERT_PEM }, qr/needs key_file \(or key_pem\)/, 'no key' ],
        [ { cert_pem => $CERT_PEM, key_pem => 'not a key' }, qr/key_pem does not contain a PEM private key/, 'a key_pem that is not PEM' ],
        [ { cert_pem => $KEY_PEM, key_pem => $KEY_PEM }, qr/cert_pem does not contain a PEM certificate/, 'a key given as cert_pem' ],
        [ { cert_pem => $CERT_PEM, key_pem => $OTHER_KEY_PEM }, qr/ssl_cert_pem \/ ssl_key_pem: /, 'a key that does not match' ],
        [ { cert_pem => $CERT_PEM, key_pem => $KEY_PEM, verify_client => 'require' }, qr/needs ca_file/, 'verify_client without a CA' ],
    );
    for my $case (@cases) {
        my ($ssl, $like, $name) = @$case;
        ok(!eval { PAGI::Server->new(app => $app, ssl => $ssl); 1 }, "$name croaks");
        like($@, $like, "$name: the message names the item");
    }
};

subtest 'an embedded server serves HTTPS from PEM text, with no file' => sub {
    pipe my $r, my $w or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        require PAGI::Server;
        require IO::Async::Loop;
        my $app = do $app_file or POSIX::_exit(3);
        my $loop = IO::Async::Loop->new;
        my $server = PAGI::Server->new(app => $app, host => '127.0.0.1', port => 0, quiet => 1, access_log => undef,
            ssl => { cert_pem => $CERT_PEM, key_pem => $KEY_PEM });
        $loop->add($server);
        $loop->attach_signal(TERM => sub { $server->shutdown->on_ready(sub { $loop->stop }) });
        $server->listen->get;
        syswrite $w, $server->port . "\n";
        close $w;
        $loop->run;
        POSIX::_exit(0);
    }
    close $w;
    my $port = <$r>;
    chomp $port if defined $port;
    ok($port, "the server listens (port @{[ $port // 'none' ]})");
    my $body = $port ? tls_get($port) : undef;
    like($body // '', qr/\Ascheme=https pid=$pid\z/, 'HTTPS answered');
    kill 'TERM', $pid;
    ok(wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 10), 'stops on TERM') or do { kill 'KILL', $pid; waitpid $pid, 0 };
};

subtest 'workers started after the files are gone still serve TLS' => sub {
    File::Copy::copy("$dir/server.pem", "$dir/gone.pem") or die $!;
    File::Copy::copy("$dir/server.key", "$dir/gone.key") or die $!;
    my $child = start_cli([ '--no-access-log', '--workers', 2, '--ssl-cert', "$dir/gone.pem", '--ssl-key', "$dir/gone.key", $app_file ]);
    ok($child->{ready}, 'pagi-server --workers 2 with TLS is up') or return diag(stderr_of($child));
    my $pid_of = sub { (tls_get($child->{port}) // '') =~ /pid=(\d+)/ ? $1 : undef };
    my $first;
    ok(wait_until(sub { $first = $pid_of->() }, 15), 'a worker answers over TLS') or diag(stderr_of($child));
    unlink "$dir/gone.pem", "$dir/gone.key" or die "unlink: $!";
    # A rolling restart: each worker is replaced by a fresh one, built
    # after the unlink; an old one stops only once its successor serves.
    kill 'HUP', $child->{pid};
    ok(wait_until(sub { stderr_of($child) =~ /restart complete|restart aborted/ }, 30), 'the rolling restart ended')
        or diag(stderr_of($child));
    unlike(stderr_of($child), qr/restart aborted|failed to start|not found|cannot read/, 'no worker failed for want of a file')
        or diag(stderr_of($child));
    my $later;
    ok(wait_until(sub { $later = $pid_of->(); $later && $later != $first }, 15), 'a new worker answers over TLS')
        or diag(stderr_of($child));
    is(stop_cli($child), 0, 'exit 0');
};

done_testing;
