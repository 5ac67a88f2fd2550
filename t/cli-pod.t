# bin/pagi-server documents its command line (issue 9, item 17): the POD
# has the sections a man page needs, is valid, renders as a man page and as
# text (what perldoc shows), and every flag `pagi-server --help` prints is
# in an =item of the POD (aliases beside the flag they alias), with the
# same default; no =item names a flag --help does not know.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT run_cli slurp);
use Pod::Checker ();
use Pod::Man ();
use Pod::Text ();

my $script = ROOT() . '/bin/pagi-server';
my $source = slurp($script);
my ($pod) = $source =~ /^(=head1 .*)\z/ms;
ok(defined $pod, 'bin/pagi-server carries POD') or do { done_testing; exit };

subtest 'sections, validity, rendering' => sub {
    my @heads = $pod =~ /^=head1 (.+)$/mg;
    for my $want ('NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'SIGNALS', 'EXIT STATUS', 'ENVIRONMENT', 'SEE ALSO') {
        ok((grep { $_ eq $want } @heads), "=head1 $want");
    }
    like($pod, qr/^=head1 NAME\s+pagi-server - \S/m, 'NAME is "pagi-server - what it does"');
    for my $signal (qw(TERM INT QUIT HUP TTIN TTOU USR2)) {
        like($pod =~ /^=head1 SIGNALS(.*?)^=head1/ms ? $1 : '', qr/\b$signal\b/, "SIGNALS covers $signal");
    }
    my $exit = $pod =~ /^=head1 EXIT STATUS(.*?)^=head1/ms ? $1 : '';
    like($exit, qr/^=item B<$_>$/m, "EXIT STATUS lists $_") for 0, 1, 2;

    my $checker = Pod::Checker->new(-warnings => 2);
    open my $null, '>', \my $report;
    $checker->parse_from_file($script, $null);
    is($checker->num_errors, 0, 'podchecker: no errors') or diag($report);
    is($checker->num_warnings, 0, 'podchecker: no warnings') or diag($report);

    my $man = Pod::Man->new(name => 'PAGI-SERVER', section => 1);
    $man->output_string(\my $roff);
    $man->parse_file($script);
    like($roff // '', qr/^\.SH "?OPTIONS"?/m, 'renders as a man page with an OPTIONS section');
    my $text = Pod::Text->new;
    $text->output_string(\my $plain);
    $text->parse_file($script);
    like($plain // '', qr/--shutdown-timeout \*?N\*?/, 'renders as text (perldoc) with the options');
};

# --help as the user sees it: "  -a, --app FILE   help ... (default: X)".
my $help = run_cli(['--help']);
is($help->{exit}, 0, '--help exits 0');
my (@entries, $entry);
for my $line (split /\n/, $help->{stdout}) {
    if ($line =~ /\A {2,6}(-\S.*?)(?: {2,}(\S.*))?\z/) {
        push @entries, $entry = { spec => $1, text => $2 // '' };
    }
    elsif ($entry && $line =~ /\A {20,}(\S.*)\z/) {
        $entry->{text} .= ($entry->{text} eq '' ? '' : ' ') . $1;
    }
    else {
        undef $entry;
    }
}
for my $e (@entries) {
    $e->{flags} = [ map { (split ' ')[0] } split /, /, $e->{spec} ];
    $e->{alias_of} = $1 if $e->{text} =~ /\Aalias of (--[\w-]+)\z/;
    $e->{default} = $1 if $e->{text} =~ /\(default: (.*)\)\z/;
}
cmp_ok(scalar @entries, '>', 60, sprintf('--help lists the flags (%d entries)', scalar @entries));

# The POD's option items: the flags of each =item line and its "Default:" paragraph.
my ($options) = $pod =~ /^=head1 OPTIONS\n(.*?)^=head1 /ms;
my (%item_of, %default_of, @items);
for my $item (split /^=item /m, $options // '') {
    my ($head, $body) = split /\n/, $item, 2;
    next unless defined $body && $head =~ /\AB</;
    (my $plain = $head) =~ s/[BICFL]<([^<>]*)>/$1/g;
    my @flags = $plain =~ /(?:\A|, )(--?(?:\[no-\])?[\w-]+)/g;
    push @items, \@flags;
    my ($default) = $body =~ /^Default: (.*?)\s*(?:\n\n|\n?\z|\n=)/ms;
    if (defined $default) {
        $default =~ s/[BICFL]<([^<>]*)>/$1/g;
        $default =~ s/\s+/ /g;
    }
    for my $flag (@flags) {
        $item_of{$flag} = \@flags;
        $default_of{$flag} = $default;
    }
}
cmp_ok(scalar @items, '>', 60, sprintf('the POD has an =item per option (%d)', scalar @items));

subtest 'every --help flag is documented in the POD, with its default' => sub {
    for my $e (@entries) {
        for my $flag (@{ $e->{flags} }) {
            ok($item_of{$flag}, "$flag is in an =item") or next;
            if ($e->{alias_of}) {
                ok((grep { $_ eq $e->{alias_of} } @{ $item_of{$flag} }), "$flag is documented beside $e->{alias_of}");
                next;
            }
            my $want = $e->{default};
            $want =~ s{\APAGI-Server-Native/\S+\z}{PAGI-Server-Native/VERSION} if defined $want;
            is($default_of{$flag}, $want, "$flag: the POD's default matches --help (" . ($want // 'none') . ')');
        }
    }
};

subtest 'the POD documents no flag --help does not know' => sub {
    my %known = map { $_ => 1 } map { @{ $_->{flags} } } @entries;
    for my $flag (sort keys %item_of) {
        ok($known{$flag}, "$flag (in the POD) is a real flag");
    }
};

done_testing;
