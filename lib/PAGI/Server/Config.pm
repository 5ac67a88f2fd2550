package PAGI::Server::Config;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use PAGI::Server::Listen ();

# Every option of PAGI::Server (PAGI-SPEC 7.1) with its default. `engine`
# marks options handed to the Rust engine under the same name; `todo` marks
# options whose feature is not built yet: setting them to anything but their
# default croaks instead of being silently ignored.
my %OPTIONS = (
    app                      => { live => 1, required => 1 },
    host                     => { default => '127.0.0.1' },
    port                     => { default => 5000, check => \&_port },
    quiet                    => { live => 1, default => 0 },
    access_log               => { default => \*STDERR, undef_ok => 1, live => 1 },
    access_log_format        => { live => 1, default => 'clf', check => sub {
        require PAGI::Server::AccessLog;
        PAGI::Server::AccessLog->is_valid($_[0]) ? undef : ($@ =~ s/ at \S+ line \d+\.?\n\z//r);
    } },
    log_level                => { live => 1, default => 'info', check => sub { $_[0] =~ /\A(?:debug|info|warn|error)\z/ ? undef : 'must be debug, info, warn or error' } },
    loop_type                => { default => undef, check => sub { $_[0] =~ /\A[A-Za-z]\w*(?:::\w+)*\z/ ? undef : 'is not a loop class name' } },
    listener_backlog         => { default => 2048, check => \&_positive },
    max_body_size            => { default => 10_000_000, engine => 1, check => \&_non_negative },
    max_header_size          => { default => 8192, engine => 1, check => \&_positive },
    max_header_count         => { default => 100, engine => 1, check => \&_positive },
    max_request_line_size    => { default => 8192, engine => 1, check => \&_positive },
    timeout                  => { default => 60, engine => 1, check => \&_seconds },
    header_timeout           => { default => 30, engine => 1, check => \&_seconds },
    write_high_watermark     => { default => 65536, engine => 1, check => \&_positive },
    write_low_watermark      => { default => 16384, engine => 1, check => \&_non_negative },
    server_header            => { default => "PAGI-Server-Native/$VERSION", engine => 1 },
    shutdown_timeout         => { default => 30, check => \&_seconds },
    body_timeout             => { default => 60, engine => 1, check => \&_seconds },
    request_timeout          => { default => 0, engine => 1, check => \&_seconds },
    max_connections          => { default => 0, engine => 1, check => \&_non_negative },
    max_ws_frame_size        => { default => 16 * 1024 * 1024, engine => 1, check => \&_positive },
    ws_ping_interval         => { default => 20, engine => 1, check => \&_seconds },
    ws_ping_timeout          => { default => 20, engine => 1, check => \&_seconds },
    group_overflow           => { default => 'drop', engine => 1, check => sub { $_[0] =~ /\A(?:drop|skip)\z/ ? undef : 'must be drop or skip' } },
    group_max_buffered       => { default => 1024 * 1024, engine => 1, check => \&_positive },
    # Groups across processes and machines: the engine parses the URL, so
    # its message (never showing the password) is the one users see.
    pubsub                   => { default => '', engine => 1, secret => 1, check => _engine_option('pubsub') },
    pubsub_prefix            => { default => 'pagi:', engine => 1, check => _engine_option('pubsub_prefix') },
    # The engine reads WebSocket messages only as the app takes them (at most
    # 16 ahead), so its queue never reaches this bound; accepted for
    # configurations written for the reference server.
    max_receive_queue        => { default => 1000, check => \&_positive },
    # The engine sends files with sendfile(2) and never blocks the loop, so
    # there is nothing to tune; kept so configurations written for the
    # reference server still load.
    sync_file_threshold      => { default => 65536, check => \&_non_negative },
    validate_events          => { live => 1, default => sub { ($ENV{PAGI_ENV} // '') eq 'development' ? 1 : 0 } },
    lifespan_mode            => { default => 'auto', check => sub { $_[0] =~ /\A(?:auto|on|off)\z/ ? undef : 'must be auto, on or off' } },
    lifespan_startup_timeout => { default => 30, check => \&_seconds },
    extensions               => { live => 1, default => {}, check => \&_extensions },

    # Where to listen (PAGI::Server::Listen); exclusivity is checked in new.
    socket                   => { default => undef, check => sub { ref $_[0] || $_[0] eq '' ? 'must be a path' : undef } },
    socket_mode              => { default => undef, check => sub { PAGI::Server::Listen->check_mode($_[0]) } },
    listen                   => { default => undef, check => sub { PAGI::Server::Listen->check_listen($_[0]) } },
    fd                       => { default => undef, check => \&_non_negative },
    reuseport                => { default => 0 },
    ssl                      => { default => undef, check => \&_ssl },
    disable_tls              => { default => 0 },
    # Prefork (PAGI::Server::Workers).
    workers                  => { default => 0, check => \&_non_negative },
    max_requests             => { default => 0, check => \&_non_negative },
    heartbeat_timeout        => { default => 50, check => \&_seconds },
    # Scope rewriting in front of the app.
    proxy_headers            => { live => 1, default => 0 },
    forwarded_allow_ips      => { live => 1, default => \&_forwarded_allow_ips_default, check => \&_trusted_list },
    forwarded_header         => { live => 1, default => 0 },
    forwarded_host           => { live => 1, default => 0 },
    root_path                => { live => 1, default => '', check => sub { ref $_[0] ? 'must be a string' : $_[0] =~ m{\A(?:/.*[^/])?\z}s ? undef : "must be empty or start with '/' and not end with '/'" } },

    # Known, not built yet.
    ws_idle_timeout            => { todo => 1, default => 0 },
    sse_idle_timeout           => { todo => 1, default => 0 },
    http2                      => { todo => 1, default => 0 },
    h2_max_concurrent_streams  => { todo => 1, default => 100 },
    h2_initial_window_size     => { todo => 1, default => 65535 },
    h2_max_frame_size          => { todo => 1, default => 16384 },
    h2_enable_push             => { todo => 1, default => 0 },
    h2_enable_connect_protocol => { todo => 1, default => 1 },
    h2_max_header_list_size    => { todo => 1, default => 65536 },
    h2_rst_rate_limit          => { todo => 1 },
);

sub _trusted_list {
    require PAGI::Server::ProxyHeaders;
    return PAGI::Server::ProxyHeaders->check_trusted($_[0]);
}

# As uvicorn: the environment names the trusted proxies when the option does not.
sub _forwarded_allow_ips_default {
    my $value = $ENV{FORWARDED_ALLOW_IPS} // return '127.0.0.1,::1';
    my $problem = _trusted_list($value);
    Carp::croak("PAGI::Server: environment variable FORWARDED_ALLOW_IPS $problem (got '$value')") if defined $problem;
    return $value;
}

# Only extensions this server implements may be advertised.
sub _extensions {
    my ($ext) = @_;
    return 'must be a hash reference' unless ref $ext eq 'HASH';
    for my $name (sort keys %$ext) {
        return "names an extension this server does not provide ('$name'; available: fullflush)"
            unless $name eq 'fullflush';
        return "value for '$name' must be a hash reference" unless ref $ext->{$name} eq 'HASH';
    }
    return undef;
}

# TLS (served by the engine with rustls): files are checked here so a bad
# path is reported by new, naming the path, not at the first connection.
# Each item comes from its file or, given as *_pem, as PEM text.
my @SSL_KEYS = qw(ca_file ca_pem cert_file cert_pem cipher_list key_file key_pem min_version verify_client);
my %SSL_KEYS = map { $_ => 1 } @SSL_KEYS;
my %PEM_WANTED = (
    cert => [ qr/-----BEGIN CERTIFICATE-----/,           'a PEM certificate' ],
    key  => [ qr/-----BEGIN [A-Z ]*PRIVATE KEY-----/,    'a PEM private key' ],
    ca   => [ qr/-----BEGIN CERTIFICATE-----/,           'a PEM certificate' ],
);

sub _ssl {
    my ($ssl) = @_;
    return 'must be a hash reference {cert_file, key_file, ...}' unless ref $ssl eq 'HASH';
    my ($unknown) = grep { !$SSL_KEYS{$_} } sort keys %$ssl;
    return "has an unknown key '$unknown' (known: @SSL_KEYS)" if defined $unknown;
    for my $item (qw(cert key)) {
        return "needs ${item}_file (or ${item}_pem)"
            unless grep { defined $ssl->{$_} && length $ssl->{$_} } "${item}_file", "${item}_pem";
    }
    for my $item (qw(cert key ca)) {
        my ($want, $what) = @{ $PEM_WANTED{$item} };
        if (defined(my $text = $ssl->{"${item}_pem"})) {
            return "${item}_pem must be a string of PEM text" if ref $text;
            return "${item}_pem does not contain $what" unless $text =~ $want;
            next;
        }
        my $key = "${item}_file";
        my $path = $ssl->{$key} // next;
        return "$key '$path' not found" unless -e $path;
        return "$key '$path' is not a file" unless -f $path;
        return "$key '$path' is not readable" unless -r $path;
        # A file that is plainly not PEM is caught here, at construction.
        open my $fh, '<', $path or return "$key '$path' cannot be read: $!";
        read $fh, my $head, 1 << 20;
        return "$key '$path' does not contain $what" unless ($head // '') =~ $want;
    }
    my $verify = _verify_client($ssl->{verify_client});
    return "verify_client must be none, optional or require (got '$ssl->{verify_client}')" unless defined $verify;
    return "verify_client '$verify' needs ca_file (the CA that signs client certificates)"
        if $verify ne 'none' && !defined $ssl->{ca_file} && !defined $ssl->{ca_pem};
    return "min_version must be TLSv1_2 or TLSv1_3 (got '$ssl->{min_version}')"
        if defined $ssl->{min_version} && !defined _min_version($ssl->{min_version});
    return "cipher_list must be colon-separated cipher suite names (got '$ssl->{cipher_list}')"
        if defined $ssl->{cipher_list} && $ssl->{cipher_list} !~ /\A[A-Za-z0-9_-]+(?::[A-Za-z0-9_-]+)*\z/;
    return undef;
}

# A copy of the ssl hash with every file's PEM text read now, while the
# process may still read it: pagi-server drops privileges (--user) later,
# and the engine, started after that (in each worker), gets only the text.
sub _ssl_with_pem {
    my ($ssl) = @_;
    my %copy = %$ssl;
    for my $item (qw(cert key ca)) {
        next if defined $copy{"${item}_pem"};
        my $path = $copy{"${item}_file"} // next;
        open my $fh, '<', $path or Carp::croak("PAGI::Server: option 'ssl': ${item}_file '$path' cannot be read: $!");
        local $/;
        $copy{"${item}_pem"} = <$fh> // '';
    }
    return \%copy;
}

# 0/1 are accepted too: the reference server took verify_client as a boolean.
sub _verify_client {
    my ($v) = @_;
    return 'none' if !defined $v || $v eq '' || $v eq '0' || $v eq 'none';
    return 'require' if $v eq '1' || $v eq 'require';
    return 'optional' if $v eq 'optional';
    return undef;
}

sub _min_version {
    my ($v) = @_;
    return $v =~ /\ATLSv?1[._]([23])\z/i ? "TLSv1_$1" : undef;
}

sub _port { $_[0] =~ /\A\d+\z/ && $_[0] <= 65535 ? undef : 'must be a port number from 0 to 65535' }
sub _positive { $_[0] =~ /\A\d+\z/ && $_[0] > 0 ? undef : 'must be a positive integer' }
sub _non_negative { $_[0] =~ /\A\d+\z/ ? undef : 'must be a non-negative integer' }
sub _seconds { $_[0] =~ /\A(?:\d+(?:\.\d*)?|\.\d+)\z/ ? undef : 'must be a non-negative number of seconds' }

=head1 NAME

PAGI::Server::Config - the option registry of PAGI::Server

=head1 SYNOPSIS

    my $config = PAGI::Server::Config->new(app => $app, port => 0);
    my $port   = $config->{port};
    my %engine = $config->engine_options;

=head1 DESCRIPTION

One table of every option PAGI::Server knows (PAGI-SPEC section 7.1, plus
C<fd>, C<proxy_headers>, C<forwarded_allow_ips>, C<forwarded_header>,
C<forwarded_host> and C<root_path>), with
its default. C<new> fills in defaults, checks values (including that the
C<ssl> files exist, are readable and look like PEM, and that C<listen>,
C<socket>, C<fd> and C<host>/C<port> are not mixed), croaks naming an
unknown option, and croaks C<not supported yet> for a known option whose
feature is not built, unless it is given its default value. The CLI
(L<PAGI::Server::Runner>) takes its defaults from here.

=head1 METHODS

=head2 new

    my $config = PAGI::Server::Config->new(%options);

Returns a hash-based object holding every option.

=cut

sub new {
    my ($class, %args) = @_;
    my %config;
    for my $name (sort keys %args) {
        my $spec = $OPTIONS{$name}
            or Carp::croak("PAGI::Server: unknown option '$name'");
        my $value = $args{$name};
        # undef means "not given", as the reference's `//` defaults do;
        # only access_log gives undef a meaning of its own (no access log).
        next if !defined $value && !$spec->{undef_ok};
        if ($spec->{todo}) {
            next if _same($value, $spec->{default});
            Carp::croak("PAGI::Server: option '$name' is not supported yet");
        }
        if (defined $value && $spec->{check}) {
            my $problem = $spec->{check}->($value);
            # A URL may carry a password: its value is not repeated.
            Carp::croak("PAGI::Server: option '$name' $problem" . (ref $value || $spec->{secret} ? '' : " (got '$value')"))
                if defined $problem;
        }
        $config{$name} = $value;
    }
    for my $name (keys %OPTIONS) {
        my $spec = $OPTIONS{$name};
        Carp::croak("PAGI::Server: option '$name' is required") if $spec->{required} && !defined $config{$name};
        next if exists $config{$name};
        $config{$name} = ref $spec->{default} eq 'CODE' ? $spec->{default}->() : $spec->{default};
    }
    Carp::croak("PAGI::Server: option 'app' must be a code reference")
        unless ref $config{app} && (ref $config{app} eq 'CODE' || overload::Method($config{app}, '&{}'));
    Carp::croak("PAGI::Server: write_low_watermark must not exceed write_high_watermark")
        if $config{write_low_watermark} > $config{write_high_watermark};
    for my $name (qw(forwarded_header forwarded_host)) {
        Carp::croak("PAGI::Server: option '$name' needs 'proxy_headers'") if $config{$name} && !$config{proxy_headers};
    }
    _check_listeners(\%args);
    $config{ssl} = _ssl_with_pem($config{ssl}) if $config{ssl};
    $config{_explicit} = { map { $_ => 1 } grep { defined $args{$_} || $OPTIONS{$_}{undef_ok} } keys %args };
    return bless \%config, $class;
}

# listen, socket and fd each name every listener; host and port only the default one.
sub _check_listeners {
    my ($args) = @_;
    my %exclusive = (listen => [qw(socket socket_mode fd host port)], socket => [qw(fd host port)], fd => [qw(host port)]);
    for my $name (qw(listen socket fd)) {
        next unless defined $args->{$name};
        my ($clash) = grep { defined $args->{$_} } @{ $exclusive{$name} };
        Carp::croak("PAGI::Server: options '$name' and '$clash' are exclusive") if $clash;
    }
    Carp::croak("PAGI::Server: option 'socket_mode' needs 'socket' (or socket_mode inside a listen entry)")
        if defined $args->{socket_mode} && !defined $args->{socket};
}

sub _same {
    my ($a, $b) = @_;
    return !defined $b if !defined $a;
    return 0 if !defined $b || ref $a || ref $b;
    return $a eq $b;
}

=head2 engine_options

Returns the (name, value) pairs handed to L<PAGI::Server::Native/new>.

=cut

# A check that asks the engine itself (PAGI::Server::Native->new validates
# every option and starts nothing).
sub _engine_option {
    my ($name) = @_;
    return sub {
        my ($value) = @_;
        return 'must be a string' if ref $value;
        require PAGI::Server::Native;
        return undef if eval { PAGI::Server::Native->new($name => $value); 1 };
        (my $e = $@) =~ s/ at \S+ line \d+\.?\n\z//;
        $e =~ s/\A(?:PAGI::Server::Native\S*: )?(?:\Q$name\E: )?//;
        return $e;
    };
}

sub engine_options {
    my ($self) = @_;
    my @pairs = map { ($_ => $self->{$_}) } grep { $OPTIONS{$_}{engine} } sort keys %OPTIONS;
    if (my $ssl = $self->tls) {
        # The engine takes the PEM text; the file names are for its messages.
        for my $item (qw(cert key ca)) {
            push @pairs, "ssl_${item}_file" => $ssl->{"${item}_file"} if defined $ssl->{"${item}_file"};
            push @pairs, "ssl_${item}_pem"  => $ssl->{"${item}_pem"}  if defined $ssl->{"${item}_pem"};
        }
        push @pairs, ssl_verify_client => _verify_client($ssl->{verify_client}) if defined $ssl->{verify_client};
        push @pairs, ssl_min_version => _min_version($ssl->{min_version}) if defined $ssl->{min_version};
        push @pairs, ssl_cipher_list => $ssl->{cipher_list} if defined $ssl->{cipher_list};
    }
    return @pairs;
}

=head2 tls

The C<ssl> hash when TLS is on (C<ssl> given and C<disable_tls> false),
else undef.

=cut

sub tls {
    my ($self) = @_;
    return $self->{ssl} && !$self->{disable_tls} ? $self->{ssl} : undef;
}

=head2 is_explicit

    $config->is_explicit('access_log');

True when the option was passed to C<new> rather than defaulted.

=cut

sub is_explicit { $_[0]{_explicit}{ $_[1] } }

=head2 names

The names of every known option, sorted.

=cut

sub names { sort keys %OPTIONS }

=head2 default

    PAGI::Server::Config->default('timeout');   # 60

An option passed as C<undef> takes this default (as the reference server's
C<//> defaults do); only C<access_log =E<gt> undef> means something else:
no access log.

=cut

sub default {
    my $spec = $OPTIONS{ $_[1] } or return undef;
    return ref $spec->{default} eq 'CODE' ? $spec->{default}->() : $spec->{default};
}

=head2 is_live, live_names

    PAGI::Server::Config->is_live('log_level');   # 1

Options read per request or per log line, which
L<PAGI::Server/configure> may change on a server that is already
listening: C<app>, C<access_log>, C<access_log_format>, C<quiet>,
C<log_level>, C<validate_events>, C<extensions>, C<root_path>,
C<proxy_headers>, C<forwarded_allow_ips>.

=cut

sub is_live { $OPTIONS{ $_[1] } && $OPTIONS{ $_[1] }{live} ? 1 : 0 }

sub live_names { grep { $OPTIONS{$_}{live} } sort keys %OPTIONS }

=head2 same_value

    PAGI::Server::Config->same_value($a, $b);

True when two option values are the same: both undef, equal strings, or
the same reference.

=cut

sub same_value {
    my (undef, $a, $b) = @_;
    return !defined $b if !defined $a;
    return 0 if !defined $b || ref $a ne ref $b;
    return ref $a ? Scalar::Util::refaddr($a) == Scalar::Util::refaddr($b) : $a eq $b;
}

require overload;
require Scalar::Util;

1;
