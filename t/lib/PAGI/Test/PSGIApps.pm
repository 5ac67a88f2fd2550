package PAGI::Test::PSGIApps;
# Helpers for t/psgi-apps-*.t, which run real PSGI software (the fixtures
# in t/apps/) over real sockets. start_psgi_server is the one place that
# chooses the server under test:
#
#   (default)                      bin/pagi-server --app WRAPPER, where WRAPPER
#                                  is a .pl file returning
#                                  PAGI::App::WrapPSGI->new(psgi_app => $psgi)->to_app
#   PAGI_TEST_PSGI_SERVER=plackup  Plack's own HTTP::Server::PSGI, to check
#                                  that the tests and fixtures themselves are right
#
# Loads PAGI::Test::Server without importing it: the test file's own import
# arms the per-file alarm.
use strict;
use warnings;

use parent 'Exporter';
use Digest::SHA ();
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Test::More ();
use Time::HiRes qw(time);
use PAGI::Test::Server ();
use PAGI::Test::CLI qw(ROOT free_port start_cli stop_cli wait_until slurp);

our @EXPORT_OK = qw(form_ok upload_ok need_modules start_psgi_server stop_psgi_server server_log http_request timed_request
                    multipart curl set_cookie stream_ok APPS);

my $CI = ($ENV{CI} // '') eq 'true';

sub APPS { ROOT() . '/t/apps' }

# need_modules(Module => 'debian-package', ...): skips the whole file with a
# message naming the package when one is missing, but fails under CI=true.
sub need_modules {
    my (@pairs) = @_;
    my @missing;
    while (my ($module, $package) = splice @pairs, 0, 2) {
        (my $file = "$module.pm") =~ s{::}{/}g;
        push @missing, "$module (Debian package $package)" unless eval { require $file; 1 };
    }
    return 1 unless @missing;
    my $why = 'not installed: ' . join(', ', @missing) . '; ./setup.sh installs them';
    if ($CI) {
        Test::More::fail("CI=true and $why");
        Test::More::done_testing();
        exit 1;
    }
    Test::More::plan(skip_all => $why);
}

# start_psgi_server($psgi_file) → child hashref {pid, port, ready, server, ...}
# ($psgi_file relative to the distribution root, or absolute). {ready} is
# false, with the reason in {error}, when the server did not come up.
sub start_psgi_server {
    my ($psgi_file) = @_;
    $psgi_file = File::Spec->rel2abs($psgi_file, ROOT()) unless File::Spec->file_name_is_absolute($psgi_file);
    die "start_psgi_server: no such PSGI file: $psgi_file\n" unless -f $psgi_file;
    my $which = $ENV{PAGI_TEST_PSGI_SERVER} // '';
    return _start_plackup($psgi_file) if $which eq 'plackup';
    die "PAGI_TEST_PSGI_SERVER must be unset (pagi-server with PAGI::App::WrapPSGI) or 'plackup', not '$which'\n"
        if $which ne '';

    # Missing WrapPSGI is a failure: these tests exist to run PSGI apps on it.
    unless (eval { require PAGI::App::WrapPSGI; 1 }) {
        return { ready => 0, server => 'pagi-server', error => "PAGI::App::WrapPSGI cannot be loaded: $@" };
    }
    my $wrapper = File::Temp->new(SUFFIX => '.pl');
    (my $quoted = $psgi_file) =~ s/([\\'])/\\$1/g;
    print {$wrapper} <<"PERL";
# The PSGI app of $psgi_file, served by pagi-server through WrapPSGI.
use strict;
use warnings;
use Plack::Util ();
use PAGI::App::WrapPSGI;

my \$psgi = Plack::Util::load_psgi('$quoted');
PAGI::App::WrapPSGI->new(psgi_app => \$psgi)->to_app;
PERL
    close $wrapper;
    my $child = start_cli([ '--app', $wrapper->filename ], timeout => 30);
    @$child{qw(server wrapper)} = ('pagi-server', $wrapper);
    $child->{error} = "pagi-server did not start:\n" . server_log($child) unless $child->{ready};
    return $child;
}

# plackup -s HTTP::Server::PSGI in a child of its own, on a free port.
my %PLACKUP_LIVE;
my $OWNER = $$;
END { if ($$ == $OWNER) { for my $pid (keys %PLACKUP_LIVE) { kill 'KILL', $pid; waitpid $pid, 0 } } }

sub _start_plackup {
    my ($psgi_file) = @_;
    my $child;
    for my $attempt (1, 2) {    # a second port if the first got taken meanwhile
        my $port = free_port();
        my $log = File::Temp->new;
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            chdir ROOT() or POSIX::_exit(126);
            open STDIN, '<', File::Spec->devnull or POSIX::_exit(126);
            open STDOUT, '>', $log->filename or POSIX::_exit(126);
            open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
            { exec $^X, '-S', 'plackup', '-s', 'HTTP::Server::PSGI', '--host', '127.0.0.1', '--port', $port, $psgi_file }
            POSIX::_exit(127);
        }
        $PLACKUP_LIVE{$pid} = 1;
        $child = { pid => $pid, port => $port, server => 'plackup', err_file => $log };
        my $up = wait_until(sub {
            return 1 if _reaped($child);
            return IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 1) ? 1 : 0;
        }, 30);
        $child->{ready} = $up && !defined $child->{status};
        last if $child->{ready};
        stop_psgi_server($child);
        $child->{error} = "plackup did not start:\n" . server_log($child);
    }
    return $child;
}

sub _reaped {
    my ($child) = @_;
    return 1 if defined $child->{status};
    return 0 unless waitpid($child->{pid}, POSIX::WNOHANG()) == $child->{pid};
    $child->{status} = $?;
    delete $PLACKUP_LIVE{ $child->{pid} };
    return 1;
}

# stop_psgi_server($child) → wait status; SIGTERM, then SIGKILL after 10 s.
sub stop_psgi_server {
    my ($child) = @_;
    return undef unless $child->{pid};
    return stop_cli($child) if $child->{server} eq 'pagi-server';
    return $child->{status} if _reaped($child);
    kill 'TERM', $child->{pid};
    unless (wait_until(sub { _reaped($child) }, 10)) {
        $child->{killed} = 1;
        kill 'KILL', $child->{pid};
        wait_until(sub { _reaped($child) }, 10);
    }
    # HTTP::Server::PSGI has no TERM handler: dying of TERM is its clean stop.
    $child->{status} = 0 if ($child->{status} // 0) == POSIX::SIGTERM();
    return $child->{status};
}

# Everything the server wrote to stderr so far.
sub server_log {
    my ($child) = @_;
    return $child->{err_file} ? slurp($child->{err_file}->filename) : '';
}

# A raw HTTP/1.1 request over a fresh connection (Connection: close):
#   http_request($port, $method, $path, headers => [name => value, ...], body => $bytes)
# → the parsed response (PAGI::Test::Server::parse_responses), or undef.
sub http_request {
    my ($port, $method, $path, %o) = @_;
    my ($r) = PAGI::Test::Server::parse_responses(
        join('', map { $_->[1] } timed_request($port, $method, $path, %o)),
        head => $method eq 'HEAD');
    return $r && defined $r->{status} ? $r : undef;
}

# Like http_request, but → list of [arrival time, bytes] for each read, until
# the server closes or `timeout` (20) s pass.
sub timed_request {
    my ($port, $method, $path, %o) = @_;
    my @headers = @{ $o{headers} // [] };
    my $body = $o{body};
    my $head = "$method $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n";
    while (my ($name, $value) = splice @headers, 0, 2) { $head .= "$name: $value\r\n" }
    $head .= 'Content-Length: ' . length($body) . "\r\n" if defined $body;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or return;
    $sock->autoflush(1);
    print {$sock} $head, "\r\n", $body // '';
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($o{timeout} // 20);
    my @reads;
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread $sock, my $buf, 65536;
        last unless $n;
        push @reads, [ time, $buf ];
    }
    return @reads;
}

# multipart(name => value, name => [filename, bytes, content type], ...)
# → (content type header, body) of a multipart/form-data request (RFC 7578).
sub multipart {
    my (@fields) = @_;
    my $boundary = 'pagi-test-' . join '', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 24;
    my $body = '';
    while (my ($name, $value) = splice @fields, 0, 2) {
        $body .= "--$boundary\r\n";
        if (ref $value) {
            my ($filename, $bytes, $type) = @$value;
            $body .= qq{Content-Disposition: form-data; name="$name"; filename="$filename"\r\n}
                . 'Content-Type: ' . ($type // 'application/octet-stream') . "\r\n\r\n$bytes\r\n";
        }
        else {
            $body .= qq{Content-Disposition: form-data; name="$name"\r\n\r\n$value\r\n};
        }
    }
    return ("multipart/form-data; boundary=$boundary", "$body--$boundary--\r\n");
}

# curl(@args) → {exit, status, headers (text), body}: the curl command (a
# real client with a real cookie jar) with its output in temp files.
# Without curl: dies under CI=true (failing the test), else returns {missing => 1}.
sub curl {
    my (@args) = @_;
    my $curl = grep { -x "$_/curl" } split /:/, $ENV{PATH} // '';
    unless ($curl) {
        die "CI=true and the curl command is not installed: ./setup.sh installs it\n" if $CI;
        return { missing => 1 };
    }
    my $head = File::Temp->new;
    my $body = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', File::Spec->devnull or POSIX::_exit(126);
        open STDOUT, '>', File::Spec->devnull or POSIX::_exit(126);
        # Expect: 100-continue would make curl pause before larger bodies.
        { exec 'curl', '-sS', '--max-time', '20', '-H', 'Expect:', '-D', $head->filename, '-o', $body->filename, @args }
        POSIX::_exit(127);
    }
    waitpid $pid, 0;
    my $headers = slurp($head->filename);
    my ($status) = $headers =~ m{\AHTTP/\S+ (\d{3})};
    return { exit => $? >> 8, status => $status, headers => $headers, body => slurp($body->filename) };
}

# set_cookie($response, $name) → "name=value" from its Set-Cookie headers, or undef.
sub set_cookie {
    my ($r, $name) = @_;
    for my $h (@{ $r->{headers} // [] }) {
        next unless $h->[0] eq 'set-cookie';
        return "$name=$1" if $h->[1] =~ /\A\Q$name\E=([^;]*)/;
    }
    return undef;
}


# stream_ok($port, $path): the fixtures' streaming endpoints write
# "first at T1\n", then 0.6 s later "second at T2\n" (T = when the app wrote
# the piece), then "done\n" and close. Checks the pieces come whole and in
# order, and that the client read the first one before the app wrote the
# second: streamed as written, not gathered until the end.
sub stream_ok {
    my ($port, $path) = @_;
    my @reads = timed_request($port, 'GET', $path);
    my ($r) = PAGI::Test::Server::parse_responses(join '', map { $_->[1] } @reads);
    Test::More::is($r && $r->{status}, 200, "GET $path: status 200");
    Test::More::ok($r && !$r->{incomplete}, 'the response ends properly');
    my ($first, $second) = (($r && $r->{body}) // '') =~ /\Afirst at (\d+\.\d+)\nsecond at (\d+\.\d+)\ndone\n\z/;
    Test::More::ok(defined $second, 'three pieces, in order') or Test::More::diag($r ? $r->{body} : 'no response');
    my ($first_read) = grep { $_->[1] =~ /first at / } @reads;
    Test::More::ok($first_read && defined $second && $first_read->[0] < $second,
        'the client has the first piece before the app writes the second')
        or Test::More::diag(sprintf 'first piece read at %.3f, second written at %s',
            $first_read ? $first_read->[0] : -1, $second // '?');
    return $r;
}

# The form and upload checks every fixture app answers the same way
# (t/apps/*: POST /form echoes the fields, POST /upload describes the file).
sub form_ok {
    my ($port) = @_;
    my $r = http_request($port, 'POST', '/form', body => 'name=Zo%C3%AB&colour=red&colour=blue',
        headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ]);
    Test::More::is($r && $r->{status}, 200, 'status 200');
    Test::More::is($r && $r->{body}, "name=Zo\xc3\xab\ncolours=red,blue\n", 'the fields, decoded and encoded again as UTF-8');
}

sub upload_ok {
    my ($port, $base) = @_;
    my $bytes = join '', map { chr($_ % 256) . ($_ % 1000 ? '' : "\r\n--\r\n") } 0 .. 299_999;
    my $expect = "title=holiday photos\nfilename=data.bin\ncontent-type=application/x-test\nsize="
        . length($bytes) . "\nsha1=" . Digest::SHA::sha1_hex($bytes) . "\n";

    my ($type, $body) = multipart(title => 'holiday photos', file => [ 'data.bin', $bytes, 'application/x-test' ]);
    my $r = http_request($port, 'POST', '/upload', body => $body, headers => [ 'Content-Type' => $type ]);
    Test::More::is($r && $r->{status}, 200, 'a raw multipart request: status 200');
    Test::More::is($r && $r->{body}, $expect, 'the upload arrives whole, with its filename, type and other field');

    my $file = File::Temp->new;
    binmode $file;
    print {$file} $bytes;
    close $file;
    my $c = curl('-F', 'title=holiday photos', '-F', "file=\@$file;filename=data.bin;type=application/x-test",
        "$base/upload");
    SKIP: {
        Test::More::skip('the curl command is not installed', 2) if $c->{missing};
        Test::More::is($c->{status}, 200, 'with curl -F: status 200');
        Test::More::is($c->{body}, $expect, 'the same');
    }
}

1;
